"""What a bridge data file holds, told by its content: Gym-QA JSONL, the paper's Gym-QA JSON, or free-form chat.

* ``gymqa``: our Gym-QA JSONL (:mod:`gymqa.question`), one question per line;
* ``paper``: the SeFAR paper's Gym-QA JSON (:mod:`gymqa.paper_format`), one object keyed by question id, read
  exactly as ``sefar gymqa import`` reads it (its ``video`` is the FineGym clip id, the key of the feature cache);
* ``freeform``: conversations about clips (:mod:`bridge.conversations`), one JSONL record per clip with a
  ``conversations`` (or ``messages``) list.

The extension is not trusted: a file whose first non-blank line is a whole JSON object is JSONL (free-form when
that object has ``conversations`` / ``messages``, the paper's format when it is a one-line object of question
entries), anything else is read as one JSON document (the paper's format), unless it is named ``.jsonl``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

from common.errors import DataError, ListFormatError
from common.jsonio import decode_text, loads
from common.textio import split_lines
from gymqa.paper_format import read_paper_json
from gymqa.question import Question, read_questions_jsonl

__all__ = ["FORMATS", "CONVERSATION_KEYS", "ClipRecords", "Example", "detect_format", "read_questions_file"]

FORMATS = ("gymqa", "paper", "freeform")
CONVERSATION_KEYS = ("conversations", "messages")
_PAPER_KEY = re.compile(r'^[ \t]*"((?:[^"\\]|\\.)*)"[ \t]*:[ \t]*\{', re.M)


class Example(NamedTuple):
    """One training target: the clip, the rendered prompt (video placeholder included), the continuation the loss
    is taken on, and ``text``: what the prompt asks (the Q-Former's instruction when the adapter has that option)."""

    clip_id: str
    prompt: str
    target: str
    text: str


class ClipRecords:
    """What training asks of a data set (questions or conversations): :meth:`records` lists its records, each
    with a ``clip_id``."""

    def records(self) -> list:
        raise NotImplementedError

    @property
    def count(self) -> int:
        return len(self.records())

    @property
    def clip_ids(self) -> set[str]:
        return {r.clip_id for r in self.records()}


def _read_text(path: str | os.PathLike) -> str:
    try:
        return decode_text(Path(path).read_bytes(), path)
    except FileNotFoundError:
        raise DataError(path, "no such data file") from None
    except IsADirectoryError:
        raise DataError(path, "a folder, not a data file") from None


def _first_record(text: str, path: str | os.PathLike) -> object:
    """The JSON value of the first non-blank line, or None when that line is not a whole JSON value."""
    for number, line in enumerate(split_lines(text), start=1):
        if line.strip():
            try:
                return loads(line, path, number)
            except ListFormatError:
                return None
    return None


def detect_format(path: str | os.PathLike) -> str:
    """``"gymqa"``, ``"paper"`` or ``"freeform"``: what ``path`` holds (rules in the module docstring)."""
    text = _read_text(path)
    if not text.strip():
        raise DataError(path, "empty: no questions or conversations in this file")
    first = _first_record(text, path)
    if isinstance(first, dict):
        if any(key in first for key in CONVERSATION_KEYS):
            return "freeform"
        if first and "clip_id" not in first and all(isinstance(v, dict) for v in first.values()):
            return "paper"
        return "gymqa"
    return "gymqa" if Path(path).suffix == ".jsonl" else "paper"


def _paper_lines(path: str | os.PathLike) -> dict[str, int]:
    """Question id -> the line its entry starts on, in a paper-format file (the first of each id)."""
    text = _read_text(path)
    lines: dict[str, int] = {}
    line, position = 1, 0
    for match in _PAPER_KEY.finditer(text):
        line += text.count("\n", position, match.start())
        position = match.start()
        lines.setdefault(loads(f'"{match.group(1)}"', path), line)
    return lines


def read_questions_file(path: str | os.PathLike, lines: dict[str, int] | None = None,
                        kind: str | None = None) -> list[Question]:
    """The questions of a Gym-QA JSONL or paper-format JSON file (``kind``: its :func:`detect_format`, found
    when None); ``lines`` receives each question's line. Free-form conversations are a :class:`DataError`: they
    have no options to score."""
    kind = kind or detect_format(path)
    if kind == "freeform":
        raise DataError(path, "free-form conversations have no options, so they cannot be scored as multiple-choice "
                              "questions; train on them (sefar bridge train) and chat with the adapter (sefar bridge "
                              "ask, sefar demo); give Gym-QA questions (JSONL or the paper's JSON) to evaluate")
    if kind == "gymqa":
        return read_questions_jsonl(path, lines)
    questions = read_paper_json(path)
    if lines is not None:
        lines.update(_paper_lines(path))
    return questions
