"""Gym-QA questions meet cached features: which clips to cache, the prompts of each objective and scoring method.

Shared by the training recipe and the evaluation. A question's clip is found in the feature cache by its
``clip_id`` (:func:`common.clipid.clip_id`, the same id the cache uses); a question whose clip has no features is
skipped and counted, never an error. Question files are our Gym-QA JSONL or the paper's Gym-QA JSON, told apart by
content (:mod:`bridge.datafile`); training also takes free-form conversations (:mod:`bridge.conversations`), whose
clip list is derived from the records and whose every clip must have features.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bridge.config import BridgeConfig
from bridge.conversations import ConversationSet, clip_list_text, read_conversations
from bridge.datafile import ClipRecords, Example, detect_format, read_questions_file
from bridge.featurecache import FeatureCache
from bridge.features import extract_features
from bridge.frames import FrameEncoderConfig
from bridge.limits import TextLimits
from common.errors import DataError
from common.textio import write_text_atomic
from encoder.data.cliplist import clip_id
from encoder.data.splits import format_samples, read_samples
from gymqa.question import Question, format_prompt

__all__ = ["LETTER_INSTRUCTION", "direction_pair_names", "QuestionSet", "encoder_source", "feature_cache", "letter_prompt_question",
           "read_question_set", "read_training_set", "write_clip_sublist"]

LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


@dataclass
class QuestionSet(ClipRecords):
    """Questions whose clip has cached features, how many were skipped for lack of them, the file they come from
    and each question's line in it (by id)."""

    questions: list[Question]
    skipped: int
    path: str = ""
    lines: dict[str, int] = field(default_factory=dict)

    def check_lengths(self, limits: TextLimits, tokenizer=None) -> None:
        """Refuse a question or option longer than ``limits`` (characters only without ``tokenizer``)."""
        limits.check_questions(self.path, self.questions, self.lines, tokenizer)

    def records(self) -> list[Question]:
        return self.questions

    @property
    def first_question(self) -> str:
        return self.questions[0].question

    def examples(self, template, objective: str) -> list[Example]:
        """The training :class:`Example` of every question: ``name`` asks the stem and targets the right option's
        text, ``letter`` asks the lettered question and targets the letter."""
        out = []
        for q in self.questions:
            if objective == "name":
                text, target = q.question, q.answer_text
            else:
                text, target = letter_prompt_question(q), q.answer_letter
            prompt, target = template.with_answer(text, target)
            out.append(Example(q.clip_id, prompt, target, text))
        return out


def _chosen(path: str | os.PathLike, types: Sequence[str], limit: int | None = None,
            lines: dict[str, int] | None = None) -> list[Question]:
    """The original questions (rotation 0) of ``path`` of the given types, the first ``limit`` of them."""
    everything = read_questions_file(path, lines)
    if not everything:
        raise DataError(path, "empty: no questions in this file")
    chosen = [q for q in everything if q.type in types and q.rotation == 0]
    if not chosen:
        raise DataError(path, f"no questions of type {', '.join(types)}")
    return chosen if limit is None else chosen[:limit]


def read_question_set(path: str | os.PathLike, types: Sequence[str], cache: FeatureCache | None = None,
                      limit: int | None = None, limits: TextLimits | None = None) -> QuestionSet:
    """The questions of ``path`` of the given types (first ``limit`` originals), keeping those with features; a
    question or option longer than ``limits`` (in characters: tokens are checked once the LLM is loaded) or no
    question with features is a :class:`DataError`."""
    lines: dict[str, int] = {}
    chosen = _chosen(path, types, limit, lines)
    qs = QuestionSet(chosen, 0, os.fspath(path), lines)
    qs.check_lengths(limits or TextLimits())
    if cache is None:
        return qs
    qs.questions = [q for q in chosen if q.clip_id in cache]
    qs.skipped = len(chosen) - len(qs.questions)
    if not qs.questions:
        skipped = cache.manifest.get("skipped") or {}
        why = f"; {len(skipped)} clips were unreadable, e.g. {next(iter(skipped.values()))}" if skipped else ""
        raise DataError(path, f"none of the {len(chosen)} questions' clips has features in {cache.root}{why}")
    return qs


def read_training_set(cfg: BridgeConfig, cache: FeatureCache, limits: TextLimits) -> QuestionSet | ConversationSet:
    """``data.train_questions`` with features in ``cache``: Gym-QA questions (either format; those without
    features skipped and counted) or free-form conversations (a clip without features is an error)."""
    path = cfg.data.train_questions
    if detect_format(path) != "freeform":
        return read_question_set(path, cfg.data.types, cache, limits=limits)
    data = ConversationSet(read_conversations(path), os.fspath(path))
    data.check_lengths(limits)
    data.check_features(cache)
    return data


def write_clip_sublist(list_path: str | os.PathLike, clip_ids: set[str], out: str | os.PathLike) -> Path:
    """Write the entries of ``list_path`` whose clip id is in ``clip_ids`` (list order kept) to ``out``."""
    samples = [s for s in read_samples(list_path) if clip_id(s) in clip_ids]
    if not samples:
        raise DataError(list_path, "none of the questions' clips is in this list")
    write_text_atomic(out, format_samples(samples))
    return Path(out)


def encoder_source(cfg: BridgeConfig) -> str | FrameEncoderConfig:
    """What :func:`bridge.features.extract_features` takes for the run's encoder."""
    if cfg.encoder.kind == "sefar":
        return cfg.encoder.export
    f = cfg.encoder.frames
    return FrameEncoderConfig(model=f.model, weights=f.weights, img_size=f.img_size, num_frames=f.num_frames,
                              mean=tuple(f.mean), std=tuple(f.std))


def feature_cache(cfg: BridgeConfig, split: str, root: str | os.PathLike, num_workers: int = 0) -> FeatureCache:
    """The features of the ``split`` ("train" | "test") questions' clips, extracted first where missing.

    The cache covers exactly the clips the questions name (for "test", those of the first ``eval.max_questions``
    questions; a sub-list of the split's clip list written beside it; for free-form training data, the records'
    videos with label 0, ``data.train_list`` unused); extraction resumes shard by shard, with the
    cache's own shard size (a cache begun by ``sefar bridge features`` on that sub-list is resumed too).
    """
    questions = cfg.data.train_questions if split == "train" else cfg.data.test_questions
    source_list = cfg.data.train_list if split == "train" else cfg.data.test_list
    folder = Path(root) / split
    sublist = folder.with_name(f"{split}_clips.txt")
    if split == "train" and detect_format(questions) == "freeform":  # the list is the records' videos, label 0
        write_text_atomic(sublist, clip_list_text(read_conversations(questions)))
        videos = cfg.data.videos or Path(questions).parent
    else:
        chosen = _chosen(questions, cfg.data.types, cfg.eval.max_questions if split == "test" else None)
        write_clip_sublist(source_list, {q.clip_id for q in chosen}, sublist)
        videos = cfg.data.videos or Path(source_list).parent
    manifest = folder / "manifest.json"
    if not manifest.is_file() or not FeatureCache(folder).manifest.get("complete"):
        extract_features(encoder_source(cfg), sublist, folder, videos, batch_size=8,
                         dtype=cfg.encoder.feature_dtype, num_workers=num_workers)
    return FeatureCache(folder)


def letter_prompt_question(question: Question) -> str:
    """The question with its lettered options and the letter instruction (generation and letter scoring)."""
    return f"{format_prompt(question.question, question.options)}\n{LETTER_INSTRUCTION}"


def direction_pair_names(manifest: str | os.PathLike) -> dict[str, str]:
    """``{name: reversed sibling's name}`` (both ways) from a SynGym ``manifest.json`` and the
    ``categories.txt`` beside it."""
    from common.finegym import read_categories
    from common.jsonio import read_json_object

    path = Path(manifest)
    pairs = read_json_object(path).get("direction_pairs")
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise DataError(path, "not a SynGym manifest with direction_pairs (a list of [forward, backward] labels)")
    names = {c.label: c.name for c in read_categories(path.parent / "categories.txt")}
    out = {}
    for forward, backward in pairs:
        out[names[forward]], out[names[backward]] = names[backward], names[forward]
    return out
