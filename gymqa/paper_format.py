"""The SeFAR paper's Gym-QA JSON format: export and import.

A file is a JSON object keyed by 7-digit ids, written with 4-space indentation and no final newline::

    {"0000000": {"answer": "A", "question": "What gymnastics move is this athlete performing? A.<opt> B.<opt> ...",
                 "answer_type": "what", "question_id": "0000000", "dataset": "finegym",
                 "video": "<clip id>", "frame_length": 74}, ...}

``answer_type`` is ``"what"`` for element questions (the paper's only kind); our other types keep their type name
(``"event"``, ``"set"``, ``"yesno"``). ``frame_length`` is the clip video's frame count, which a build from
FineGym lists does not know: it comes from the questions, a frame-length file, or an explicit fallback.
Rotated questions are recognised on import by the id suffix ``@r<k>``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from common import jsonio
from common.errors import ConfigError, DataError, ListFormatError
from common.finegym import Category
from common.textio import is_plain_int, split_lines
from gymqa.build import clip_id_of
from gymqa.io import gc_paused, read_json, read_text, write_text
from gymqa.question import LETTERS, Question

__all__ = ["answer_type", "read_frame_lengths", "read_paper_json", "split_prompt", "to_paper_dict", "write_paper_json"]

_ANSWER_TYPES = {"element": "what", "event": "event", "set": "set", "yesno": "yesno"}
_TYPES = {v: k for k, v in _ANSWER_TYPES.items()}
_LEVELS = {"element": "element", "event": "event", "set": "set", "yesno": "element"}
_ROTATION = re.compile(r"(?P<base>.+)@r(?P<k>\d+)")
_KEYS = ("answer", "question", "answer_type", "question_id", "dataset", "video", "frame_length")


def answer_type(question_type: str) -> str:
    """The paper's ``answer_type`` of one of our question types (``"element" -> "what"``)."""
    return _ANSWER_TYPES[question_type]


def _frame_length(question: Question, frame_lengths: Mapping[str, int] | None, fallback: int | None) -> int:
    if question.frame_length is not None:
        return question.frame_length
    if frame_lengths is not None and question.clip_id in frame_lengths:
        return frame_lengths[question.clip_id]
    if fallback is not None:
        return fallback
    raise KeyError(question.clip_id)


def to_paper_dict(questions: Sequence[Question], frame_lengths: Mapping[str, int] | None = None, *,
                  missing_frame_length: int | None = None, renumber: bool = True) -> dict[str, dict]:
    """The paper's dict for ``questions``; keys are ``"0000000"``, ``"0000001"``... in order when ``renumber``,
    else the question ids. Raises :class:`ConfigError` naming the clips without a frame length."""
    out: dict[str, dict] = {}
    missing = []
    for n, q in enumerate(questions):
        key = f"{n:07d}" if renumber else q.id
        try:
            length = _frame_length(q, frame_lengths, missing_frame_length)
        except KeyError:
            missing.append(q.clip_id)
            continue
        out[key] = {"answer": q.answer_letter, "question": q.prompt(), "answer_type": _ANSWER_TYPES[q.type],
                    "question_id": key, "dataset": "finegym", "video": q.clip_id, "frame_length": length}
    if missing:
        raise ConfigError(f"{len(missing)} questions have no frame length (first clip {missing[0]}); pass a "
                          "frame-length file (--frame-lengths) or a fallback (--missing-frame-length)")
    if len(out) != len(questions):
        raise ConfigError("question ids repeat; export with renumber=True")
    return out


def write_paper_json(path: str | os.PathLike, questions: Sequence[Question],
                     frame_lengths: Mapping[str, int] | None = None, *, missing_frame_length: int | None = None,
                     renumber: bool = True) -> Path:
    """Write the paper's JSON file (indent 4, no final newline, as released), atomically."""
    data = to_paper_dict(questions, frame_lengths, missing_frame_length=missing_frame_length, renumber=renumber)
    return write_text(path, jsonio.dumps(data, indent=4))


def split_prompt(prompt: str) -> tuple[str, list[str]]:
    """``"<stem> A.<opt> B.<opt> ..."`` -> ``(stem, [opt, ...])``; raises ``ValueError`` when no ``" A."`` is found.

    Letters are searched in sequence (`` B.`` after the A option, and so on), so option texts may contain dots.
    """
    start = prompt.find(" A.")
    if start < 0:
        raise ValueError("no ' A.' option marker in the question")
    stem, bounds = prompt[:start], [start]
    for letter in LETTERS[1:]:
        position = prompt.find(f" {letter}.", bounds[-1] + 3)
        if position < 0:
            break
        bounds.append(position)
    bounds.append(len(prompt))
    options = [prompt[a + 3 : b] for a, b in zip(bounds, bounds[1:])]
    return stem, options


class _CategoryLookup:
    """Finds an element question's category: by the clip's label when known, else by a unique answer text."""

    def __init__(self, categories: Sequence[Category] | None, clip_labels: Mapping[str, int] | None):
        self.by_label = {c.label: c for c in categories or ()}
        self.clip_labels = clip_labels or {}
        self.by_text: dict[str, Category | None] = {}
        for c in categories or ():
            self.by_text[c.name] = None if c.name in self.by_text else c  # None: a name several events share
            self.by_text[c.full_name] = c

    def find(self, clip_id: str, answer_text: str) -> Category | None:
        label = self.clip_labels.get(clip_id)
        if label is not None and label in self.by_label:
            return self.by_label[label]
        return self.by_text.get(answer_text)


def _brief(value: object) -> str:
    """``repr(value)`` cut to 40 characters for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _question(path: str | os.PathLike, key: str, entry: object, lookup: _CategoryLookup, split: str) -> Question:
    if not isinstance(entry, dict) or set(_KEYS) - set(entry):
        raise ListFormatError(path, f"entry {key!r} needs the keys {', '.join(_KEYS)}")
    if entry["question_id"] != key:
        raise ListFormatError(path, f"entry {key!r} has question_id {_brief(entry['question_id'])}")
    for name in ("question", "answer_type", "dataset", "video"):
        if not isinstance(entry[name], str):
            raise ListFormatError(path, f"entry {key!r}: {name} must be a string, got {_brief(entry[name])}")
    if entry["answer_type"] not in _TYPES:
        raise ListFormatError(path, f"entry {key!r}: unknown answer_type {_brief(entry['answer_type'])}")
    video = entry["video"]
    if not video or video != video.strip() or len(video.split()) != 1:
        raise ListFormatError(path, f"entry {key!r}: video must be a clip id (one word), got {_brief(video)}")
    try:
        stem, options = split_prompt(entry["question"])
    except ValueError as err:
        raise ListFormatError(path, f"entry {key!r}: {err}") from None
    empty = [LETTERS[i] for i, option in enumerate(options) if not option.strip()]
    if empty:
        raise ListFormatError(path, f"entry {key!r}: option {', '.join(empty)} has no text")
    letter = entry["answer"]
    if not isinstance(letter, str) or len(letter) != 1 or letter not in LETTERS[: len(options)] or len(options) < 2:
        raise ListFormatError(path, f"entry {key!r}: answer {letter!r} is not one of its {len(options)} option letters")
    length = entry["frame_length"]
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise ListFormatError(path, f"entry {key!r}: frame_length must be a non-negative integer")
    kind = _TYPES[entry["answer_type"]]
    category = lookup.find(entry["video"], options[LETTERS.index(letter)]) if kind == "element" else None
    rotation = _ROTATION.fullmatch(key)
    return Question(
        id=key, clip_id=entry["video"], question=stem, options=tuple(options), answer=LETTERS.index(letter),
        type=kind, level=_LEVELS[kind], event=category.event if category else None,
        set_id=category.set_id if category else None, clabel=category.label if category else None,
        glabel=category.glabel if category else None, split=split, strategy="paper",
        rotation=int(rotation["k"]) if rotation else 0, base_id=rotation["base"] if rotation else key,
        frame_length=length,
    )


@gc_paused()
def read_paper_json(path: str | os.PathLike, categories: Sequence[Category] | None = None,
                    clip_labels: Mapping[str, int] | None = None, split: str | None = None) -> list[Question]:
    """Read a paper-format file into questions, in file order.

    With ``categories``, an element question gets the event, set and labels of its clip's category: the one
    ``clip_labels`` (clip id -> label, e.g. from the element lists) names, else the one category whose name is
    the answer text (names shared across events stay unresolved). ``split`` defaults to ``"train"`` when the
    file is named ``train.json``, else ``"test"``.
    """
    data = read_json(path)
    if not isinstance(data, dict):
        raise ListFormatError(path, "expected a JSON object keyed by question id")
    split = split or ("train" if Path(path).stem == "train" else "test")
    lookup = _CategoryLookup(categories, clip_labels)
    questions = []
    for key, entry in data.items():
        try:
            questions.append(_question(path, key, entry, lookup, split))
        except ListFormatError as err:
            raise ListFormatError(path, err.reason, line=_line_of_key(path, key)) from None
    return questions


def _line_of_key(path: str | os.PathLike, key: str) -> int | None:
    """The line where the entry ``key`` of a paper-format file starts (for an error message), if found."""
    try:
        text = read_text(path)
    except (OSError, DataError):
        return None
    match = re.search(r'^[ \t]*' + re.escape(jsonio.dumps(key, ensure_ascii=False)) + r'[ \t]*:', text, re.M)
    if match is None:
        match = re.search(re.escape(jsonio.dumps(key)) + r'\s*:', text)
    return None if match is None else text.count("\n", 0, match.start()) + 1


def read_frame_lengths(path: str | os.PathLike) -> dict[str, int]:
    """Clip id -> frame count, from a paper-format JSON (its ``video``/``frame_length``) or ``<clip id> <frames>``
    lines (a path's file name without extension also works as the clip id)."""
    if Path(path).suffix == ".json":
        return {q.clip_id: q.frame_length for q in read_paper_json(path) if q.frame_length is not None}
    lengths = {}
    for number, line in enumerate(split_lines(read_text(path)), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not is_plain_int(fields[1]):
            raise ListFormatError(path, f"expected '<clip id> <frames>', got {line.strip()!r}", line=number)
        lengths[clip_id_of(fields[0])] = int(fields[1])
    if not lengths:
        raise DataError(path, "no frame lengths")
    return lengths
