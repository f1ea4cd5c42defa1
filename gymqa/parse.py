"""Robust parsing of a model's free-text answer to a multiple-choice question.

:func:`parse_answer` returns the chosen option's 0-based index, or ``None`` when the answer is empty, names no
option, or names several. ``None`` is scored as wrong (the MVBench scorer, by contrast, counts an empty answer
as correct). Accepted, in this order:

1. a bare letter, any case, optionally bracketed or followed by ``.``/``:``/``)``: ``"B"``, ``"(b)"``, ``"B."``;
2. a letter after "answer", "option" or "choice" (``"Answer: B"``, ``"the answer is b"``,
   ``"Best option: (C)"``); a lower-case letter there must end the phrase (so "the answer is a split jump" is not
   read as option A);
3. a leading capital letter with a delimiter, then text: ``"B. split jump"``, ``"(B) split jump"``, ``"B) ..."``;
   else a single distinct bracketed capital anywhere: ``"I think (C) is right"``;
4. an option's text: the whole answer equal to one option (case, spacing and end punctuation ignored), or the
   answer containing exactly one option's text once options contained in longer matching ones are discarded.

A letter beyond the question's options (``"E"`` of four) is not an answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from gymqa.question import LETTERS

__all__ = ["normalize", "parse_answer"]

_BARE = re.compile(r"\(?([A-Za-z])\)?[.:)]?")
_KEYWORD = re.compile(
    r"\b(?:answer|option|choice)\b\s*(?:is|would be|should be)?\s*[:\-]?\s*(?:\(([A-Za-z])\)|\b([A-Za-z])\b)",
    re.IGNORECASE,
)
_ENDS_PHRASE = re.compile(r"\s*(?:[.,;:!?)]|$)")
_BRACKETED = re.compile(r"\(([A-Z])\)")
_LEADING = re.compile(r"\(?([A-Z])[.:)]\s*\S")
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Case-folded text with runs of whitespace made single spaces and surrounding punctuation/quotes removed."""
    return _SPACES.sub(" ", text.casefold()).strip(" \t\n.,;:!?\"'`*")


def _letter_index(letter: str, count: int) -> int | None:
    index = LETTERS.find(letter.upper())
    return index if 0 <= index < count else None


def _keyword_letter(text: str, count: int) -> int | None:
    for match in _KEYWORD.finditer(text):
        bracketed, bare = match.groups()
        if bare and bare.islower() and not _ENDS_PHRASE.match(text, match.end()):
            continue  # "the answer is a split jump": an article, not option A
        index = _letter_index(bracketed or bare, count)
        if index is not None:
            return index
    return None


def _bracketed_letter(text: str, count: int) -> int | None:
    letters = set(_BRACKETED.findall(text))
    return _letter_index(letters.pop(), count) if len(letters) == 1 else None


@lru_cache(maxsize=65536)
def _option_pattern(option: str) -> tuple[str, re.Pattern[str] | None]:
    """An option's normalized text and a whole-word pattern finding it (``None`` for an empty text)."""
    text = normalize(option)
    return text, re.compile(rf"(?<!\w){re.escape(text)}(?!\w)") if text else None


def _text_match(text: str, options: Sequence[str]) -> int | None:
    answer = normalize(text)
    compiled = [_option_pattern(o) for o in options]
    exact = [i for i, (o, _) in enumerate(compiled) if o and o == answer]
    if len(exact) == 1:
        return exact[0]
    found = [i for i, (o, p) in enumerate(compiled) if o and o in answer and p.search(answer)]
    found = [i for i in found if not any(j != i and compiled[i][0] in compiled[j][0] for j in found)]
    return found[0] if len(found) == 1 else None


def parse_answer(text: str | None, options: Sequence[str]) -> int | None:
    """The option index named by ``text`` (see the module docstring), or ``None``."""
    if text is None:
        return None
    stripped = text.strip()
    if not stripped:
        return None
    count = len(options)
    if len(stripped) == 1:
        return _letter_index(stripped, count)
    bare = _BARE.fullmatch(stripped)
    if bare:
        return _letter_index(bare.group(1), count)
    index = _keyword_letter(stripped, count)
    if index is not None:
        return index
    leading = _LEADING.match(stripped)
    index = _letter_index(leading.group(1), count) if leading else None
    if index is None:
        index = _bracketed_letter(stripped, count)
    return index if index is not None else _text_match(stripped, options)
