"""The Gym-QA question record and its JSONL format.

One question per line, a JSON object with these keys::

    id            str   unique in the file; rotated copies are "<base id>@r<k>" (see gymqa.rotate)
    clip_id       str   FineGym clip id "{youtube_id}_E_XXXXXX_YYYYYY_A_ZZZZ_WWWW"
    question      str   the question stem, without options ("What gymnastics move is this athlete performing?")
    options       [str] option texts, shown as "A.<opt> B.<opt> ..."; never two equal texts in our builds
    answer        int   0-based index of the correct option
    answer_letter str   "A", "B", ... (redundant with answer; checked on read)
    type          str   "event" | "set" | "element" | "yesno"
    level         str   hierarchy level probed: "event" | "set" | "element" (yes/no questions are "element")
    event         str?  "VT" | "FX" | "BB" | "UB"
    set           int?  FineGym set id (1, 21..25, 31..35, 41..44)
    clabel, glabel int? class label in the source categories file, global FineGym element label
    split         str   "train" | "test"
    strategy      str?  distractor strategy ("random", "same-event", "same-set", "nearest"), "qtree" for yes/no,
                        "paper" for imported files
    seed          int?  the build seed
    rotation      int   0 for an original question, k for its k-th rotation
    base_id       str   id of the rotation-0 question (== id when rotation is 0)
    frame_length  int?  frames in the clip's video, when known (the paper's JSON carries it)
    times         [float, float]?  element start/end in absolute seconds of the YouTube video (annotation JSON)

Keys marked ``?`` may be ``null``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from common.errors import ListFormatError
from gymqa.io import gc_paused, read_jsonl, write_jsonl

__all__ = ["LETTERS", "LEVELS", "TYPES", "Question", "format_prompt", "read_questions_jsonl", "write_questions"]

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
TYPES = ("event", "set", "element", "yesno")
LEVELS = ("event", "set", "element")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Question:
    """One multiple-choice question about one clip (fields as in the module docstring)."""

    id: str
    clip_id: str
    question: str
    options: tuple[str, ...]
    answer: int
    type: str
    level: str
    event: str | None = None
    set_id: int | None = None
    clabel: int | None = None
    glabel: int | None = None
    split: str = "test"
    strategy: str | None = None
    seed: int | None = None
    rotation: int = 0
    base_id: str = ""
    frame_length: int | None = None
    times: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not self.base_id:
            object.__setattr__(self, "base_id", self.id)

    @property
    def answer_letter(self) -> str:
        """The correct option's letter."""
        return LETTERS[self.answer]

    @property
    def answer_text(self) -> str:
        """The correct option's text."""
        return self.options[self.answer]

    def prompt(self) -> str:
        """The question with lettered options, the paper's layout: ``"<stem> A.<opt> B.<opt> ..."``."""
        return format_prompt(self.question, self.options)

    def to_record(self) -> dict:
        """The JSONL object (key order as documented)."""
        return {
            "id": self.id, "clip_id": self.clip_id, "question": self.question, "options": list(self.options),
            "answer": self.answer, "answer_letter": self.answer_letter, "type": self.type, "level": self.level,
            "event": self.event, "set": self.set_id, "clabel": self.clabel, "glabel": self.glabel,
            "split": self.split, "strategy": self.strategy, "seed": self.seed, "rotation": self.rotation,
            "base_id": self.base_id, "frame_length": self.frame_length,
            "times": list(self.times) if self.times is not None else None,
        }

    def with_options(self, options: Sequence[str], answer: int, **changes: object) -> Question:
        """A copy with other options (and any other field changes)."""
        return replace(self, options=tuple(options), answer=answer, **changes)


def format_prompt(stem: str, options: Sequence[str]) -> str:
    """``"<stem> A.<opt> B.<opt> ..."`` (single spaces, no space after the dot), as in the paper's files."""
    return " ".join([stem, *(f"{LETTERS[i]}.{text}" for i, text in enumerate(options))])


_NONE = type(None)
# key -> accepted JSON types (bool is excluded from int by checking exact types)
_SCHEMA: dict[str, tuple[type, ...]] = {
    "id": (str,), "clip_id": (str,), "question": (str,), "options": (list,), "answer": (int,), "type": (str,),
    "level": (str,), "event": (str, _NONE), "set": (int, _NONE), "clabel": (int, _NONE), "glabel": (int, _NONE),
    "split": (str, _NONE), "strategy": (str, _NONE), "seed": (int, _NONE), "rotation": (int, _NONE),
    "base_id": (str, _NONE), "frame_length": (int, _NONE), "times": (list, _NONE), "answer_letter": (str, _NONE),
}


def _check_types(path: str | os.PathLike, line: int | None, record: dict) -> None:
    get = record.get
    for key, kinds in _SCHEMA.items():
        if type(get(key)) not in kinds:
            names = " or ".join("null" if k is _NONE else k.__name__ for k in kinds)
            raise ListFormatError(path, f"'{key}' must be {names}, got {get(key)!r}", line=line)


def _check_values(path: str | os.PathLike, line: int | None, record: dict) -> None:
    options = record["options"]
    if not 2 <= len(options) <= len(LETTERS) or set(map(type, options)) != {str} or "" in options:
        raise ListFormatError(path, f"'options' must hold 2..{len(LETTERS)} non-empty strings", line=line)
    if not 0 <= record["answer"] < len(options):
        reason = f"'answer' {record['answer']} is not an index into {len(options)} options"
        raise ListFormatError(path, reason, line=line)
    letter = record.get("answer_letter")
    if letter is not None and letter != LETTERS[record["answer"]]:
        raise ListFormatError(path, f"'answer_letter' {letter!r} disagrees with 'answer' {record['answer']}", line=line)
    if record["type"] not in TYPES or record["level"] not in LEVELS:
        raise ListFormatError(path, f"'type' must be one of {TYPES} and 'level' one of {LEVELS}", line=line)
    if (record.get("split") or "test") not in SPLITS:
        raise ListFormatError(path, f"'split' must be one of {SPLITS}", line=line)
    times = record.get("times")
    if times is not None and (len(times) != 2 or not all(isinstance(t, (int, float)) for t in times)):
        raise ListFormatError(path, "'times' must be [start, end] in seconds or null", line=line)


def question_from_record(record: dict, path: str | os.PathLike = "<memory>", line: int | None = None) -> Question:
    """Validate one JSONL object and build the :class:`Question`; errors name ``path:line``."""
    _check_types(path, line, record)
    _check_values(path, line, record)
    get = record.get
    times = get("times")
    return Question(
        id=record["id"], clip_id=record["clip_id"], question=record["question"], options=tuple(record["options"]),
        answer=record["answer"], type=record["type"], level=record["level"], event=get("event"), set_id=get("set"),
        clabel=get("clabel"), glabel=get("glabel"), split=get("split") or "test", strategy=get("strategy"),
        seed=get("seed"), rotation=get("rotation") or 0, base_id=get("base_id") or "",
        frame_length=get("frame_length"), times=(float(times[0]), float(times[1])) if times else None,
    )


@gc_paused()
def read_questions_jsonl(path: str | os.PathLike, lines: dict[str, int] | None = None) -> list[Question]:
    """Read a Gym-QA JSONL file; ids must be unique. ``lines``: a dict to fill with each question's line number
    (by id), for messages about a question found later."""
    questions: list[Question] = []
    seen: dict[str, int] = {} if lines is None else lines
    for line, record in read_jsonl(path):
        question = question_from_record(record, path, line)
        if question.id in seen:
            raise ListFormatError(path, f"id {question.id!r} repeats line {seen[question.id]}", line=line)
        seen[question.id] = line
        questions.append(question)
    return questions


def write_questions(path: str | os.PathLike, questions: Iterable[Question]) -> Path:
    """Write questions as JSONL, atomically."""
    return write_jsonl(path, (q.to_record() for q in questions))
