"""Describe a Gym-QA question set: counts per split/type/level/event/letter, duplicate options, uncovered classes.

A class is an element question's ``clabel`` or, when unknown (paper files read without categories), its answer
text. "Classes with no train question" compares the element questions of the test split (or every class of the
categories file, when given) with those of the train split; it is ``null`` when no train question is loaded.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from common.finegym import Category
from common.textio import is_plain_int
from gymqa.paper_format import read_paper_json
from gymqa.question import LETTERS, Question, read_questions_jsonl

__all__ = ["duplicate_option_count", "question_stats", "read_questions", "read_question_set", "stats_markdown"]


def read_questions(path: str | os.PathLike, categories: Sequence[Category] | None = None,
                   clip_labels: Mapping[str, int] | None = None, split: str | None = None) -> list[Question]:
    """Questions from our JSONL, or from the paper's JSON when the name ends in ``.json``
    (``categories``/``clip_labels``/``split`` only apply to the paper's format, see :func:`read_paper_json`)."""
    if Path(path).suffix == ".json":
        return read_paper_json(path, categories, clip_labels, split)
    return read_questions_jsonl(path)


def read_question_set(path: str | os.PathLike, **options: object) -> list[Question]:
    """A questions file, or a build folder's ``train.jsonl`` + ``test.jsonl`` (whichever exist, train first)."""
    folder = Path(path)
    if not folder.is_dir():
        return read_questions(folder, **options)
    files = [folder / name for name in ("train.jsonl", "test.jsonl") if (folder / name).is_file()]
    if not files:
        raise FileNotFoundError(f"{folder}: no train.jsonl or test.jsonl in this folder")
    return [q for file in files for q in read_questions_jsonl(file)]


def duplicate_option_count(questions: Sequence[Question]) -> int:
    """Number of questions with two options of the same text."""
    return sum(len(set(q.options)) != len(q.options) for q in questions)


def _class_key(q: Question) -> str:
    return str(q.clabel) if q.clabel is not None else q.answer_text


def _counts(values: list) -> dict[str, int]:
    counts = sorted(Counter(values).items(), key=lambda kv: str(kv[0]))
    return {("unknown" if k is None else str(k)): v for k, v in counts}


def question_stats(questions: Sequence[Question], categories: Sequence[Category] | None = None) -> dict:
    """The statistics of ``questions`` (all splits together) as a JSON-ready dict."""
    elements = [q for q in questions if q.type == "element" and q.rotation == 0]
    train_classes = {_class_key(q) for q in elements if q.split == "train"}
    if categories is not None:
        universe = {str(c.label) for c in categories}
    else:
        universe = {_class_key(q) for q in elements if q.split == "test"} or {_class_key(q) for q in elements}
    by_name = categories is None and any(q.clabel is None for q in elements)
    has_train = any(q.split == "train" for q in questions)
    missing = sorted(universe - train_classes, key=lambda k: (not is_plain_int(k), int(k) if is_plain_int(k) else 0, k))
    return {
        "questions": len(questions),
        "by_split": _counts([q.split for q in questions]),
        "by_type": _counts([q.type for q in questions]),
        "by_level": _counts([q.level for q in questions]),
        "by_event": _counts([q.event for q in questions]),
        "by_letter": {LETTERS[i]: n for i, n in sorted(Counter(q.answer for q in questions).items())},
        "by_option_count": {str(k): v for k, v in sorted(Counter(len(q.options) for q in questions).items())},
        "rotated": sum(q.rotation != 0 for q in questions),
        "duplicate_options": duplicate_option_count(questions),
        "classes": len(universe),
        # answer names, when labels are unknown: names repeat across events, so they undercount the classes
        "classes_by": "answer name" if by_name else "label",
        "classes_without_train": missing if has_train else None,
    }


def stats_markdown(stats: dict) -> str:
    """A Markdown table of :func:`question_stats` output."""
    lines = ["| statistic | value | count |", "| --- | --- | ---: |", f"| questions | all | {stats['questions']} |"]
    for name in ("split", "type", "level", "event", "letter", "option_count"):
        lines += [f"| {name} | {key} | {value} |" for key, value in stats[f"by_{name}"].items()]
    lines.append(f"| rotated copies | - | {stats['rotated']} |")
    lines.append(f"| duplicate options | - | {stats['duplicate_options']} |")
    if stats.get("classes_by") == "answer name":
        lines.append(f"| classes | distinct answer names (labels unknown; names repeat across events: pass "
                     f"--categories and --lists to count classes) | {stats['classes']} |")
    else:
        lines.append(f"| classes | - | {stats['classes']} |")
    missing = stats["classes_without_train"]
    if missing is None:
        shown = "no train split loaded"
    else:
        shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
    lines.append(f"| classes without train question | {shown or 'none'} | {'-' if missing is None else len(missing)} |")
    return "\n".join(lines) + "\n"
