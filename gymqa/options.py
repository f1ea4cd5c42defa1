"""Distractor choice for multiple-choice questions.

A question picks its wrong options ("distractors") from a universe of :class:`Choice` (element classes, sets or
events). Strategies:

* ``random`` (the paper): uniform over the universe;
* ``same-event``: other choices of the answer's event first, then the rest;
* ``same-set``: siblings of the answer's set first (hard pairs such as "... with 0.5 turn" vs "... with 1 turn"),
  then its event, then the rest;
* ``nearest``: the choices whose text is most similar to the answer's (Jaccard similarity of character
  trigrams); deterministic, ties broken by key.

Texts never repeat inside a question and the answer is never a distractor. Element names repeat across events
("switch leap to ring position" in FX and BB): with ``collision="redraw"`` such a distractor is skipped and
another drawn; with ``collision="tag"`` it is kept and every colliding option shows its event tag ("(BB) ...").
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["COLLISIONS", "STRATEGIES", "Choice", "DistractorSampler", "trigram_similarity"]

STRATEGIES = ("random", "same-event", "same-set", "nearest")
COLLISIONS = ("redraw", "tag")


@dataclass(frozen=True)
class Choice:
    """One possible option: ``key`` is its label (element Clabel, set id or event code), ``text`` its plain name."""

    key: int
    text: str
    event: str
    set_id: int | None = None

    @property
    def tagged(self) -> str:
        """The text with its event tag, used where plain texts collide: ``"(FX) switch leap"``."""
        return f"({self.event}) {self.text}"


def _trigrams(text: str) -> frozenset[str]:
    padded = f"  {text.casefold()} "
    return frozenset(padded[i : i + 3] for i in range(len(padded) - 2))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b)


def trigram_similarity(a: str, b: str) -> float:
    """Jaccard similarity of the character-trigram sets of two texts (case-insensitive), in [0, 1]."""
    return _jaccard(_trigrams(a), _trigrams(b))


class DistractorSampler:
    """Draws ``num_options - 1`` distractors for an answer from ``choices`` with one strategy.

    Tiers (candidate lists tried in order) are precomputed per answer key, so a draw costs ``O(num_options)``.
    """

    def __init__(self, choices: Sequence[Choice], strategy: str = "random", num_options: int = 4,
                 collision: str = "redraw"):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown distractor strategy {strategy!r}; choose from {STRATEGIES}")
        if collision not in COLLISIONS:
            raise ValueError(f"unknown collision policy {collision!r}; choose from {COLLISIONS}")
        if num_options < 2:
            raise ValueError(f"num_options must be at least 2, got {num_options}")
        self.choices = {c.key: c for c in choices}
        if len(self.choices) != len(choices):
            raise ValueError("choice keys must be unique")
        self.strategy, self.collision = strategy, collision
        distinct = {c.text for c in choices} if collision == "redraw" else {c.tagged for c in choices}
        self.num_options = min(num_options, len(distinct))  # fewer when the universe is smaller
        self._tiers: dict[int, list[list[Choice]]] = {}
        self._gram_cache: dict[int, frozenset[str]] = {}

    def tiers(self, answer: Choice) -> list[list[Choice]]:
        """Candidate lists, hardest first, for ``answer`` (cached)."""
        if answer.key not in self._tiers:
            others = [c for c in self.choices.values() if c.key != answer.key]
            if self.strategy == "nearest":
                grams = _trigrams(answer.text)
                tiers = [sorted(others, key=lambda c: (-_jaccard(grams, self._grams(c)), c.key))]
            else:
                def rank(c: Choice) -> int:
                    if self.strategy == "same-set" and c.set_id == answer.set_id:
                        return 0
                    return 1 if self.strategy != "random" and c.event == answer.event else 2
                ranks = [rank(c) for c in others]
                tiers = [[c for c, r in zip(others, ranks) if r == level] for level in range(3)]
                tiers = [tier for tier in tiers if tier]
            self._tiers[answer.key] = tiers
        return self._tiers[answer.key]

    def _grams(self, choice: Choice) -> frozenset[str]:
        if choice.key not in self._gram_cache:
            self._gram_cache[choice.key] = _trigrams(choice.text)
        return self._gram_cache[choice.key]

    def draw(self, answer_key: int, rng: random.Random) -> list[Choice]:
        """``num_options - 1`` distinct distractors for the answer ``answer_key``, in draw order."""
        answer = self.choices[answer_key]
        picked: list[Choice] = []
        need = self.num_options - 1
        keys, texts = {answer.key}, {self._text_key(answer)}
        if need <= 0:
            return picked
        for tier in self.tiers(answer):
            for candidate in self._candidates(tier, need, rng):
                text = self._text_key(candidate)
                if candidate.key in keys or text in texts:
                    continue
                picked.append(candidate)
                keys.add(candidate.key)
                texts.add(text)
                if len(picked) == need:
                    return picked
        raise ValueError(f"only {len(picked)} distinct distractors exist for {answer.text!r}; need {need}")

    def _candidates(self, tier: list[Choice], need: int, rng: random.Random) -> Iterator[Choice]:
        """The tier in trial order: ranked for ``nearest``; else uniform random draws (repeats are skipped by the
        caller, which makes them draws without replacement), then a full random permutation if still short."""
        if self.strategy == "nearest":
            yield from tier
            return
        size, draw = len(tier), rng.random
        for _ in range(2 * need + 2):
            yield tier[int(draw() * size)]
        yield from rng.sample(tier, size)

    def _text_key(self, choice: Choice) -> str:
        """What must differ between options: the plain text (``redraw``) or the tagged text (``tag``)."""
        return choice.text if self.collision == "redraw" else choice.tagged

    def texts(self, options: Sequence[Choice]) -> list[str]:
        """Display texts: plain names, with the event tag on options whose plain names collide."""
        counts: dict[str, int] = {}
        for option in options:
            counts[option.text] = counts.get(option.text, 0) + 1
        return [o.tagged if counts[o.text] > 1 else o.text for o in options]
