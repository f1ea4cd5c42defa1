"""Build Gym-QA from FineGym-format files (the real FineGym release or SynGym's copies of its formats).

Inputs (explicit paths, so any folder in these formats works):

* a categories file (gym99/gym288 ``Clabel: ..; set: ..; Glabel: ..; (EV) name``, or gym530),
* optionally ``set_categories.txt`` (needed for set-level questions),
* the train and val element lists (``<clip id> <label>``),
* optionally ``finegym_glabel_to_Qtree.json`` (needed for yes/no questions),
* optionally a labeled list (``<path or clip id> <label>`` per line, e.g. the SeFAR ``labeled.csv`` with
  ``/root/video/<clip id>.mp4 <Clabel>``): its clips, in its order, become the train questions,
* optionally ``finegym_annotation_info_v1.1.json`` (adds each element's absolute ``times``).

Without a labeled list, the train questions cover a seeded labeled subset of the train list: one random clip
per class, then uniformly random clips up to ``floor(labeled_fraction * N)`` in all (the SeFAR 5% splits have
exactly that size). Test questions cover the whole val list.

Output folder: ``train.jsonl`` and ``test.jsonl`` (see :mod:`gymqa.question`) and ``manifest.json``
(name, format, config, source paths as given, counts per split and type).
"""

from __future__ import annotations

import math
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from common import clipid
from common.errors import ConfigError, DataError, ListFormatError
from common.finegym import (
    EVENT_CODES,
    Category,
    QTreeEntry,
    default_paths,
    parse_clip_id,
    read_annotations,
    read_categories,
    read_element_list,
    read_qtree,
    read_set_categories,
)
from common.textio import is_plain_int, split_lines
from gymqa.io import gc_paused, read_text, write_json
from gymqa.options import COLLISIONS, STRATEGIES, Choice, DistractorSampler
from gymqa.question import LETTERS, TYPES, Question, write_questions

__all__ = [
    "EVENT_NAMES",
    "STEMS",
    "BuildConfig",
    "GymQA",
    "build_finegym",
    "build_gymqa",
    "build_questions",
    "clip_id_of",
    "read_labeled_list",
    "select_labeled",
    "set_text",
]

FORMAT = "gymqa-jsonl/1"
EVENT_NAMES = {"VT": "vault", "FX": "floor exercise", "BB": "balance beam", "UB": "uneven bars"}
STEMS = {
    "event": "On which apparatus is this athlete performing?",
    "set": "Which group of gymnastics elements is this athlete performing?",
    "element": "What gymnastics move is this athlete performing?",
}
YES_NO = ("yes", "no")
_EVENT_KEY = {name: code for code, name in EVENT_CODES.items()}  # "VT" -> 1 ... "UB" -> 4
_LEVEL = {"event": "event", "set": "set", "element": "element", "yesno": "element"}
# Readable texts for the official set names (typos of the release included as keys).
_SET_PHRASES = {
    "vault": "", "leap_jump_hop": "leaps, jumps and hops", "turns": "turns", "side_salto": "side saltos",
    "front_salto": "front saltos", "back_salto": "back saltos", "flight_salto": "flight elements with salto",
    "flight_handspring": "flight elements with handspring", "dismounts": "dismounts", "circles": "circles",
    "fligh_same_bar": "flight elements on the same bar", "flight_same_bar": "flight elements on the same bar",
    "transition_flight": "transition flights between the bars",
}


def set_text(event: str, raw_name: str) -> str:
    """Readable set option: ``("FX", "FX_leap_jump_hop") -> "floor exercise: leaps, jumps and hops"``.

    The event prefix is dropped; official names get a fixed phrase, others have ``_`` replaced by spaces.
    A set that only names its event (``"vault"``) reads as the event name.
    """
    rest = raw_name.removeprefix(f"{event}_")
    phrase = _SET_PHRASES.get(rest, rest.replace("_", " ").strip())
    if not phrase or phrase == EVENT_NAMES[event]:
        return EVENT_NAMES[event]
    return f"{EVENT_NAMES[event]}: {phrase}"


@dataclass(frozen=True)
class BuildConfig:
    """How questions are made. ``types`` from ``TYPES``; ``strategy`` from ``STRATEGIES``; ``collision`` from
    ``COLLISIONS``; ``yesno_per_clip`` yes/no questions per clip (capped by the clip's question-tree length)."""

    num_options: int = 4
    strategy: str = "random"
    types: tuple[str, ...] = ("element",)
    labeled_fraction: float = 0.05
    seed: int = 0
    collision: str = "redraw"
    yesno_per_clip: int = 1

    def validate(self) -> None:
        """Raise :class:`ConfigError` listing every problem and its fix."""
        problems = []
        if not 2 <= self.num_options <= len(LETTERS):
            problems.append(f"num_options={self.num_options}: use 2..{len(LETTERS)}")
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy={self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        if not self.types or set(self.types) - set(TYPES) or len(set(self.types)) != len(self.types):
            problems.append(f"types={self.types!r}: use distinct values from {', '.join(TYPES)}")
        if not 0 < self.labeled_fraction <= 1:
            problems.append(f"labeled_fraction={self.labeled_fraction}: use a fraction in (0, 1]")
        if self.collision not in COLLISIONS:
            problems.append(f"collision={self.collision!r}: use one of {', '.join(COLLISIONS)}")
        if self.yesno_per_clip < 1:
            problems.append(f"yesno_per_clip={self.yesno_per_clip}: use 1 or more")
        if problems:
            raise ConfigError("invalid Gym-QA build config:\n  " + "\n  ".join(problems))


@dataclass(repr=False)
class GymQA:
    """A built question set: ``train``/``test`` questions, the manifest (JSON-ready) and the files written."""

    name: str
    train: list[Question]
    test: list[Question]
    manifest: dict
    files: dict[str, Path] = field(default_factory=dict)

    def __repr__(self) -> str:
        folder = self.files["manifest"].parent if "manifest" in self.files else None
        return f"GymQA(name={self.name!r}, train={len(self.train)}, test={len(self.test)}, folder={str(folder)!r})"


def clip_id_of(token: str) -> str:
    """The clip id in a list entry (a bare id, or a video path such as ``/root/video/<clip id>.mp4``)."""
    return clipid.clip_id(token.replace("\\", "/"))


def read_labeled_list(path: str | os.PathLike) -> list[tuple[int, str, int]]:
    """``[(line, clip_id, label), ...]`` of ``<path or clip id> <label>`` lines (CRLF tolerant).

    The clip id is the file name without directories and extension (``/root/video/<clip id>.mp4``).
    """
    rows = []
    for number, line in enumerate(split_lines(read_text(path)), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not is_plain_int(fields[1]):
            raise ListFormatError(path, f"expected '<path or clip id> <label>', got {line.strip()!r}", line=number)
        clip_id = clip_id_of(fields[0])
        try:
            parse_clip_id(clip_id)
        except ValueError as err:
            raise ListFormatError(path, str(err), line=number) from None
        rows.append((number, clip_id, int(fields[1])))
    return rows


def select_labeled(items: Sequence[tuple[str, int]], fraction: float, seed: int) -> list[tuple[str, int]]:
    """A seeded labeled subset: one clip per class, then random clips up to ``floor(fraction * len(items))``.

    Returned in the order of ``items``.
    """
    rng = random.Random(f"labeled|{seed}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, (_, label) in enumerate(items):
        by_class[label].append(index)
    chosen = {rng.choice(indices) for _, indices in sorted(by_class.items())}
    total = max(len(chosen), math.floor(round(fraction * len(items), 6)))
    rest = [i for i in range(len(items)) if i not in chosen]
    chosen.update(rng.sample(rest, total - len(chosen)))
    return [items[i] for i in sorted(chosen)]


def _balanced_positions(count: int, num_options: int, rng: random.Random) -> list[int]:
    """``count`` answer positions, each of ``0..num_options-1`` used equally often up to rounding, shuffled."""
    positions = [i % num_options for i in range(count)]
    rng.shuffle(positions)
    return positions


@dataclass(frozen=True)
class _Universe:
    """The choices of each question type and how to find a clip's answer among them."""

    categories: dict[int, Category]
    samplers: dict[str, DistractorSampler]
    qtree: dict[int, QTreeEntry] | None

    def answer_key(self, kind: str, category: Category) -> int:
        return {"element": category.label, "set": category.set_id, "event": _EVENT_KEY[category.event]}[kind]


def _universe(categories: Sequence[Category], set_names: dict[int, str] | None, qtree: dict[int, QTreeEntry] | None,
              config: BuildConfig) -> _Universe:
    choices: dict[str, list[Choice]] = {
        "element": [Choice(c.label, c.name, c.event, c.set_id) for c in categories],
        "event": [Choice(_EVENT_KEY[e], EVENT_NAMES[e], e)
                  for e in sorted({c.event for c in categories}, key=_EVENT_KEY.get)],
    }
    if "set" in config.types:
        if set_names is None:
            raise ConfigError("set-level questions need the set names file (set_categories.txt); pass set_names")
        set_ids = sorted({c.set_id for c in categories})
        missing = [s for s in set_ids if s not in set_names]
        if missing:
            raise ConfigError(f"the set names file lacks sets {missing} used by the categories; add them")
        events = {c.set_id: c.event for c in categories}
        choices["set"] = [Choice(s, set_text(events[s], set_names[s]), events[s], s) for s in set_ids]
    if "yesno" in config.types and qtree is None:
        raise ConfigError("yes/no questions need the question tree (finegym_glabel_to_Qtree.json); pass qtree")
    samplers = {}
    for kind in ("element", "set", "event"):
        if kind in config.types:
            sampler = DistractorSampler(choices[kind], config.strategy, config.num_options, config.collision)
            if sampler.num_options < 2:
                raise ConfigError(f"{kind} questions need at least 2 distinct {kind} choices; drop '{kind}' from types")
            samplers[kind] = sampler
    return _Universe({c.label: c for c in categories}, samplers, qtree)


def _choice_questions(kind: str, clips: Sequence[tuple[str, int]], universe: _Universe, split: str,
                      config: BuildConfig) -> list[dict]:
    sampler = universe.samplers[kind]
    rng = random.Random(f"{config.seed}|{split}|{kind}")
    positions = _balanced_positions(len(clips), sampler.num_options, rng)
    rows = []
    for (clip_id, label), position in zip(clips, positions):
        category = universe.categories[label]
        answer = sampler.choices[universe.answer_key(kind, category)]
        options = sampler.draw(answer.key, rng)
        rng.shuffle(options)
        options.insert(position, answer)
        rows.append(dict(clip_id=clip_id, category=category, question=STEMS[kind], options=sampler.texts(options),
                         answer=position, type=kind, strategy=config.strategy))
    return rows


def _pick_yesno(entry: QTreeEntry, count: int, targets: list[bool], rng: random.Random) -> list[int]:
    """``count`` distinct question indices of ``entry``, preferring answers equal to ``targets`` in turn."""
    remaining = list(range(len(entry.questions)))
    picked = []
    for target in targets[:count]:
        matching = [i for i in remaining if entry.answers[i] == target] or remaining
        index = rng.choice(matching)
        remaining.remove(index)
        picked.append(index)
    return picked


def _yesno_questions(clips: Sequence[tuple[str, int]], universe: _Universe, split: str, config: BuildConfig,
                     qtree_path: str | os.PathLike) -> list[dict]:
    assert universe.qtree is not None
    rng = random.Random(f"{config.seed}|{split}|yesno")
    picks = []
    targets = [i % 2 == 0 for i in range(len(clips) * config.yesno_per_clip)]
    rng.shuffle(targets)
    for n, (clip_id, label) in enumerate(clips):
        category = universe.categories[label]
        entry = universe.qtree.get(category.glabel)
        if entry is None:
            raise DataError(qtree_path, f"no question tree entry for Glabel {category.glabel} (clip {clip_id})")
        count = min(config.yesno_per_clip, len(entry.questions))
        slot = targets[n * config.yesno_per_clip : (n + 1) * config.yesno_per_clip]
        picks.extend((clip_id, category, entry, i) for i in _pick_yesno(entry, count, slot, rng))
    positions = _balanced_positions(len(picks), 2, rng)
    rows = []
    for (clip_id, category, entry, index), position in zip(picks, positions):
        correct = YES_NO[0] if entry.answers[index] else YES_NO[1]
        options = [correct, YES_NO[1] if correct == YES_NO[0] else YES_NO[0]]
        if position == 1:
            options.reverse()
        text = " ".join(entry.questions[index].split())
        rows.append(dict(clip_id=clip_id, category=category, question=text[:1].upper() + text[1:], options=options,
                         answer=position, type="yesno", strategy="qtree"))
    return rows


@gc_paused()
def build_questions(clips: Sequence[tuple[str, int]], categories: Sequence[Category], split: str,
                    config: BuildConfig | None = None, *, set_names: dict[int, str] | None = None,
                    qtree: dict[int, QTreeEntry] | None = None, times: dict[str, tuple[float, float]] | None = None,
                    qtree_path: str | os.PathLike = "finegym_glabel_to_Qtree.json") -> list[Question]:
    """Questions of every configured type for ``clips`` (``(clip_id, label)``), ids ``"<split>-<n:07d>"``.

    Questions are grouped by type in ``config.types`` order, clips in input order inside a type.
    """
    config = config or BuildConfig()
    config.validate()
    universe = _universe(categories, set_names, qtree, config)
    rows: list[dict] = []
    for kind in config.types:
        if kind == "yesno":
            rows.extend(_yesno_questions(clips, universe, split, config, qtree_path))
        else:
            rows.extend(_choice_questions(kind, clips, universe, split, config))
    questions = []
    for n, row in enumerate(rows):
        category: Category = row.pop("category")
        questions.append(Question(
            id=f"{split}-{n:07d}", level=_LEVEL[row["type"]], event=category.event, set_id=category.set_id,
            clabel=category.label, glabel=category.glabel, split=split, seed=config.seed,
            options=tuple(row.pop("options")),
            times=(times or {}).get(row["clip_id"]), **row,
        ))
    return questions


def _check_labels(items: Sequence[tuple[str, int]], categories: Sequence[Category], path: str | os.PathLike,
                  categories_path: str | os.PathLike) -> None:
    for clip_id, label in items:
        if not 0 <= label < len(categories):
            raise DataError(path, f"clip {clip_id} has label {label}, which {categories_path} does not define")


def _labeled_items(labeled: str | os.PathLike, train: Sequence[tuple[str, int]],
                   train_path: str | os.PathLike) -> list[tuple[str, int]]:
    """The labeled list's clips, each checked to be in the train list with the same label."""
    train_labels = dict(train)
    items = []
    for line, clip_id, label in read_labeled_list(labeled):
        if clip_id not in train_labels:
            raise ListFormatError(labeled, f"clip {clip_id} is not in the train list {train_path}", line=line)
        if train_labels[clip_id] != label:
            reason = f"clip {clip_id} has label {label} but {train_labels[clip_id]} in {train_path}"
            raise ListFormatError(labeled, reason, line=line)
        items.append((clip_id, label))
    if not items:
        raise ListFormatError(labeled, "the labeled list has no clips: no train questions could be built")
    return items


def _annotation_times(path: str | os.PathLike) -> dict[str, tuple[float, float]]:
    return {a.clip_id: (a.event_start + a.start, a.event_start + a.end) for a in read_annotations(path)}


@gc_paused()
def build_gymqa(categories: str | os.PathLike, set_names: str | os.PathLike | None, train_list: str | os.PathLike,
                val_list: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                qtree: str | os.PathLike | None = None, labeled: str | os.PathLike | None = None,
                annotations: str | os.PathLike | None = None, config: BuildConfig | None = None,
                name: str = "gymqa", seed: int | None = None) -> GymQA:
    """Build one Gym-QA set from FineGym-format files; write ``train.jsonl``, ``test.jsonl`` and
    ``manifest.json`` into ``out_dir`` when given. See the module docstring for the inputs; ``seed``, when
    given, replaces ``config.seed``."""
    config = config or BuildConfig()
    if seed is not None:
        config = replace(config, seed=seed)
    config.validate()
    cats = read_categories(categories)
    sets = read_set_categories(set_names) if set_names is not None else None
    tree = read_qtree(qtree) if qtree is not None else None
    times = _annotation_times(annotations) if annotations is not None else None
    train_items, val_items = read_element_list(train_list), read_element_list(val_list)
    for items, path in ((train_items, train_list), (val_items, val_list)):
        if not items:
            raise ListFormatError(path, "the element list has no clips: no questions could be built from it")
    _check_labels(train_items, cats, train_list, categories)
    _check_labels(val_items, cats, val_list, categories)
    chosen = _labeled_items(labeled, train_items, train_list) if labeled is not None else select_labeled(
        train_items, config.labeled_fraction, config.seed)
    common = dict(set_names=sets, qtree=tree, times=times, qtree_path=qtree or "finegym_glabel_to_Qtree.json")
    train = build_questions(chosen, cats, "train", config, **common)
    test = build_questions(val_items, cats, "test", config, **common)
    sources = {"categories": categories, "set_names": set_names, "train_list": train_list, "val_list": val_list,
               "qtree": qtree, "labeled": labeled, "annotations": annotations}
    manifest = {
        "name": name, "format": FORMAT, "config": {**asdict(config), "types": list(config.types)},
        "sources": {k: (os.fspath(v) if v is not None else None) for k, v in sources.items()},
        "labeled": "list" if labeled is not None else "fraction",
        "counts": {split: _count_types(qs) for split, qs in (("train", train), ("test", test))},
        "clips": {"train": len(chosen), "test": len(val_items), "train_pool": len(train_items)},
        "annotated_clips": None if times is None else sum(c in times for c, _ in [*chosen, *val_items]),
    }
    result = GymQA(name, train, test, manifest)
    if out_dir is not None:
        out = Path(out_dir)
        result.files = {"train": write_questions(out / "train.jsonl", train),
                        "test": write_questions(out / "test.jsonl", test)}
        result.files["manifest"] = write_json(out / "manifest.json", manifest)
    return result


def _count_types(questions: Sequence[Question]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for q in questions:
        counts[q.type] = counts.get(q.type, 0) + 1
    return counts


def build_finegym(finegym_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                  sefar_dir: str | os.PathLike | None = None, config: BuildConfig | None = None) -> dict[str, GymQA]:
    """Gym-QA-99 and Gym-QA-288 from a FineGym release folder (standard file names).

    ``sefar_dir`` (a folder with ``all99_5/labeled.csv`` and ``all288_5/labeled.csv``) reproduces the paper's
    train clips. The question tree and the annotation JSON are used when present in ``finegym_dir``.
    Writes ``<out_dir>/gymqa99`` and ``<out_dir>/gymqa288`` when ``out_dir`` is given.
    """
    paths = default_paths(finegym_dir)
    results = {}
    for classes in ("99", "288"):
        name = f"gymqa{classes}"
        labeled = Path(sefar_dir) / f"all{classes}_5" / "labeled.csv" if sefar_dir is not None else None
        results[name] = build_gymqa(
            paths[f"gym{classes}_categories"], paths["set_categories"], paths[f"gym{classes}_train"],
            paths[f"gym{classes}_val"], Path(out_dir) / name if out_dir is not None else None,
            qtree=paths["qtree"] if paths["qtree"].is_file() else None, labeled=labeled,
            annotations=paths["annotations"] if paths["annotations"].is_file() else None, config=config, name=name,
        )
    return results
