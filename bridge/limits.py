"""Bounds on the text a question brings into the LLM, checked before any model work.

A question (or an option) is counted in LLM tokens (:func:`count_tokens`, shared by ``bridge eval``, ``bridge
train``, ``bridge ask`` and the demo). Characters are checked first, at :data:`CHARS_PER_TOKEN` per token, so
that the tokenizer never sees megabytes: no tokenizer makes a token of more characters than that for real text.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from common.errors import ConfigError, DataError

__all__ = ["CHARS_PER_TOKEN", "MAX_OPTION_TOKENS", "MAX_QUESTION_TOKENS", "TextLimits", "count_tokens"]

MAX_QUESTION_TOKENS = 256
MAX_OPTION_TOKENS = 64
CHARS_PER_TOKEN = 16


def count_tokens(tokenizer, text: str) -> int:
    """How many tokens ``text`` takes (no special tokens added)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class TextLimits:
    """At most ``question`` tokens per question and ``option`` tokens per option (``flag``: the setting that
    changes them, named in errors)."""

    question: int = MAX_QUESTION_TOKENS
    option: int = MAX_OPTION_TOKENS
    flag: str = "data.max_question_tokens / data.max_option_tokens"

    def problem(self, text: str, limit: int, tokenizer=None) -> str | None:
        """Why ``text`` is too long for ``limit`` tokens (characters first; tokens when ``tokenizer`` is given)."""
        if len(text) > limit * CHARS_PER_TOKEN:
            return f"{len(text)} characters (more than {limit} tokens can be; the limit is {limit} tokens)"
        if tokenizer is not None and (n := count_tokens(tokenizer, text)) > limit:
            return f"{n} tokens (the limit is {limit})"
        return None

    def check_argument(self, name: str, text: str, tokenizer=None) -> None:
        """A :class:`ConfigError` naming the argument ``name`` when ``text`` (a question) is too long."""
        if (why := self.problem(text, self.question, tokenizer)) is not None:
            raise ConfigError(f"the {name} is too long: {why}; raise {self.flag} to allow it")

    def check_questions(self, path: str | os.PathLike, questions: Sequence, lines: Mapping[str, int],
                        tokenizer=None) -> None:
        """A :class:`DataError` naming the questions file and line of the first question or option too long."""
        for q in questions:
            texts = [("question", q.question, self.question)]
            texts += [(f"option {i + 1}", o, self.option) for i, o in enumerate(q.options)]
            for what, text, limit in texts:
                if (why := self.problem(text, limit, tokenizer)) is not None:
                    raise DataError(path, f"{what} of {q.id!r} is too long: {why}; raise {self.flag} to allow it",
                                    line=lines.get(q.id))
