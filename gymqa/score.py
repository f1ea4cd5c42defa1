"""Score a model's answers to Gym-QA questions.

Predictions are JSONL, one object per question, ``{"id": <question id>, <one answer key>}`` where the answer key is

* ``"letter"``: ``"B"`` (parsed like free text, so ``"(B)"`` also works),
* ``"index"``: the 0-based option index,
* ``"text"``: free text, parsed by :func:`gymqa.parse.parse_answer` (option letter or option text),
* ``"loglikelihoods"``: one number per option; the highest wins (a tie for the highest, or a NaN, is no answer).

Other keys (a model name, the raw output, ...) are ignored. A JSON object ``{id: value}`` is also read (a string
is free text, an integer an index, a list log-likelihoods). A question without a prediction, or with an unparseable
or empty one, counts as wrong.

Reported: accuracy overall and per type, level, event and set, over the original questions (rotation 0);
answer-position bias (per letter: gold count, prediction count and frequency, accuracy); and, when the questions
include rotations (see :mod:`gymqa.rotate`), CircularEval: an item is right only if every rotation is answered
correctly.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from common.errors import DataError, ListFormatError
from gymqa.io import gc_paused, parse_jsonl, read_json, read_text, write_json, write_jsonl, write_text
from gymqa.parse import parse_answer
from gymqa.question import LETTERS, Question
from gymqa.stats import read_questions

__all__ = ["ANSWER_KEYS", "Prediction", "ScoreReport", "Tally", "read_predictions", "resolve", "score", "score_files",
           "write_predictions"]

ANSWER_KEYS = ("letter", "index", "text", "loglikelihoods")
_ANSWER_KEY_SET = frozenset(ANSWER_KEYS)


class Prediction(NamedTuple):
    """One raw prediction: ``kind`` is one of :data:`ANSWER_KEYS`; ``source``/``line`` locate it for errors."""

    kind: str
    value: object
    source: str = "<memory>"
    line: int | None = None

    @property
    def where(self) -> str:
        """``"path:line"`` (or just the source) for error messages."""
        return self.source if self.line is None else f"{self.source}:{self.line}"


@dataclass
class Tally:
    """Correct answers out of ``n`` questions."""

    n: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else math.nan

    def add(self, right: bool) -> None:
        self.n += 1
        self.correct += right

    def to_dict(self) -> dict:
        return {"n": self.n, "correct": self.correct, "accuracy": None if not self.n else round(self.accuracy, 6)}


@dataclass
class ScoreReport:
    """Everything :func:`score` measures; ``to_dict`` gives the JSON, ``to_markdown`` the tables."""

    overall: Tally
    questions: int
    answered: int
    unparsed: int
    missing: int
    unknown_ids: int
    by_type: dict[str, Tally] = field(default_factory=dict)
    by_level: dict[str, Tally] = field(default_factory=dict)
    by_event: dict[str, Tally] = field(default_factory=dict)
    by_set: dict[str, Tally] = field(default_factory=dict)
    letters: dict[str, dict] = field(default_factory=dict)
    circular: dict | None = None

    def to_dict(self) -> dict:
        groups = {name: {k: t.to_dict() for k, t in getattr(self, f"by_{name}").items()}
                  for name in ("type", "level", "event", "set")}
        return {"overall": self.overall.to_dict(), "questions": self.questions, "answered": self.answered,
                "unparsed": self.unparsed, "missing": self.missing, "unknown_ids": self.unknown_ids, "by": groups,
                "letters": self.letters, "circular": self.circular}

    def to_markdown(self) -> str:
        """Markdown tables: overall, each breakdown, per-letter bias, and CircularEval when present."""
        lines = ["| group | value | n | correct | accuracy |", "| --- | --- | ---: | ---: | ---: |",
                 _row("overall", "all", self.overall)]
        for name in ("type", "level", "event", "set"):
            lines += [_row(name, key, tally) for key, tally in getattr(self, f"by_{name}").items()]
        lines += ["", f"originals {self.overall.n} (all questions with rotations {self.questions}): answered "
                      f"{self.answered}, unparsed {self.unparsed}, missing {self.missing}; "
                      f"unknown ids {self.unknown_ids}", "",
                  "| letter | gold | predicted | predicted share | accuracy |", "| --- | ---: | ---: | ---: | ---: |"]
        for letter, row in self.letters.items():
            lines.append(f"| {letter} | {row['gold']} | {row['predicted']} | {_pct(row['frequency'])} "
                         f"| {_pct(row['accuracy'])} |")
        if self.circular:
            c = self.circular
            lines += ["", "| CircularEval | items | rotations | correct | accuracy |",
                      "| --- | ---: | ---: | ---: | ---: |",
                      f"| all | {c['items']} | {c['rotations']} | {c['correct']} | {_pct(c['accuracy'])} |"]
        return "\n".join(lines) + "\n"

    def write(self, json_path: str | os.PathLike | None = None, markdown_path: str | os.PathLike | None = None) -> None:
        """Write the JSON and/or Markdown report atomically."""
        if json_path is not None:
            write_json(json_path, self.to_dict())
        if markdown_path is not None:
            write_text(markdown_path, self.to_markdown())


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _row(group: str, key: str, tally: Tally) -> str:
    return f"| {group} | {key} | {tally.n} | {tally.correct} | {_pct(tally.to_dict()['accuracy'])} |"


def _prediction_from_value(value: object, source: str) -> Prediction:
    if isinstance(value, str):
        return Prediction("text", value, source)
    if isinstance(value, int) and not isinstance(value, bool):
        return Prediction("index", value, source)
    if isinstance(value, list):
        return Prediction("loglikelihoods", value, source)
    raise ValueError(f"a prediction must be a string, an integer or a list of numbers, got {value!r}")


# Tells the two prediction layouts apart by the first line; the strict reader (common.jsonio) then parses the file.
_SNIFF = json.JSONDecoder(parse_int=lambda _: 0, parse_float=lambda _: 0.0, parse_constant=lambda _: 0.0)


@gc_paused()
def read_predictions(path: str | os.PathLike) -> dict[str, Prediction]:
    """Read predictions: JSONL records (the first line is an object with an ``"id"``) or one ``{id: value}``
    JSON object. Ids must be unique; an empty file has no predictions."""
    text = read_text(path)
    first = text.lstrip().split("\n", 1)[0]
    if not first:
        return {}
    try:  # only to tell JSONL from one JSON object: numbers are not checked (or built) here
        head = _SNIFF.decode(first)
    except (ValueError, RecursionError):
        head = None
    if not (isinstance(head, dict) and "id" in head):
        data = read_json(path)
        if not isinstance(data, dict):
            raise ListFormatError(path, "expected JSONL records with an 'id', or a JSON object {id: prediction}")
        try:
            return {str(k): _prediction_from_value(v, f"{os.fspath(path)} (id {k})") for k, v in data.items()}
        except ValueError as err:
            raise ListFormatError(path, str(err)) from None
    predictions: dict[str, Prediction] = {}
    source = os.fspath(path)
    for line, record in parse_jsonl(text, path):
        qid = record.get("id")
        kinds = _ANSWER_KEY_SET.intersection(record)
        if type(qid) is not str or len(kinds) != 1:
            raise ListFormatError(path, f"need a string 'id' and exactly one of {', '.join(ANSWER_KEYS)}", line=line)
        if qid in predictions:
            raise ListFormatError(path, f"id {qid!r} repeats line {predictions[qid].line}", line=line)
        (kind,) = kinds
        predictions[qid] = Prediction(kind, record[kind], source, line)
    return predictions


def _argmax(values: Sequence[float]) -> int | None:
    """Index of the single largest value; ``None`` on a tie for the largest or any NaN."""
    if any(math.isnan(v) for v in values):
        return None
    best = max(values)
    winners = [i for i, v in enumerate(values) if v == best]
    return winners[0] if len(winners) == 1 else None


def resolve(prediction: Prediction | None, question: Question) -> int | None:
    """The option index a prediction chooses, or ``None`` (no, empty or unparseable answer).

    Malformed values (an index out of range, a log-likelihood list of the wrong length) raise :class:`DataError`.
    """
    if prediction is None:
        return None
    kind, value = prediction.kind, prediction.value
    count = len(question.options)
    if kind in ("letter", "text"):
        if value is not None and not isinstance(value, str):
            raise DataError(prediction.where, f"'{kind}' must be a string for question {question.id!r}")
        return parse_answer(value, question.options)
    if kind == "index":
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < count:
            raise DataError(prediction.where, f"index {value!r} is not in 0..{count - 1} for question {question.id!r}")
        return value
    if not isinstance(value, list) or len(value) != count or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise DataError(prediction.where, f"'loglikelihoods' must be {count} numbers for question {question.id!r}")
    try:
        return _argmax([float(v) for v in value])
    except OverflowError:
        raise DataError(prediction.where, f"a log-likelihood of question {question.id!r} is beyond float range") from None


def _circular(questions: Sequence[Question], right: Mapping[str, bool]) -> dict | None:
    """CircularEval over the questions that have rotations; ``None`` when none has."""
    groups: dict[str, list[Question]] = defaultdict(list)
    for q in questions:
        groups[q.base_id].append(q)
    items = correct = 0
    sizes: set[int] = set()
    for base, group in groups.items():
        if len(group) == 1 and group[0].rotation == 0:
            continue
        rotations = sorted(q.rotation for q in group)
        if rotations != list(range(len(group))):
            raise ValueError(f"question {base!r} has rotations {rotations}; expected 0..{len(group) - 1}")
        items += 1
        sizes.add(len(group))
        correct += all(right[q.id] for q in group)
    if not items:
        return None
    return {"items": items, "rotations": min(sizes) if len(sizes) == 1 else sorted(sizes), "correct": correct,
            "accuracy": round(correct / items, 6)}


def _letters(originals: Sequence[Question], choices: Mapping[str, int | None]) -> dict[str, dict]:
    width = max(len(q.options) for q in originals)
    gold, predicted, right = [0] * width, [0] * width, [0] * width
    for q in originals:
        choice = choices.get(q.id)
        gold[q.answer] += 1
        if choice is not None:
            predicted[choice] += 1
        right[q.answer] += choice == q.answer
    answered = sum(predicted)
    return {LETTERS[i]: {"gold": gold[i], "predicted": predicted[i],
                         "frequency": round(predicted[i] / answered, 6) if answered else None,
                         "accuracy": round(right[i] / gold[i], 6) if gold[i] else None} for i in range(width)}


@gc_paused()
def score(questions: Sequence[Question], predictions: Mapping[str, Prediction]) -> ScoreReport:
    """Score ``predictions`` (by question id) against ``questions``; see the module docstring."""
    if not questions:
        raise ValueError("no questions to score")
    choices = {q.id: resolve(predictions.get(q.id), q) for q in questions}
    right = {q.id: choices[q.id] == q.answer for q in questions}
    originals = [q for q in questions if q.rotation == 0]
    report = ScoreReport(Tally(), questions=len(questions), answered=0, unparsed=0, missing=0,
                         unknown_ids=len(predictions.keys() - choices.keys()))
    groups = {name: defaultdict(Tally) for name in ("type", "level", "event", "set")}
    for q in originals:
        ok, choice = right[q.id], choices[q.id]
        report.overall.add(ok)
        if choice is not None:
            report.answered += 1
        elif q.id in predictions:
            report.unparsed += 1
        else:
            report.missing += 1
        for name, key in (("type", q.type), ("level", q.level), ("event", q.event), ("set", q.set_id)):
            groups[name]["unknown" if key is None else str(key)].add(ok)
    report.by_type, report.by_level, report.by_event, report.by_set = (
        dict(sorted(groups[n].items())) for n in ("type", "level", "event", "set"))
    report.letters = _letters(originals, choices)
    report.circular = _circular(questions, right)
    return report


@gc_paused()
def score_files(questions_path: str | os.PathLike, predictions_path: str | os.PathLike,
                **read_options: object) -> ScoreReport:
    """Score a predictions file against a questions file (our JSONL or the paper's JSON, see
    :func:`gymqa.stats.read_questions`)."""
    questions = read_questions(questions_path, **read_options)
    predictions = read_predictions(predictions_path)
    _check_ids_match(questions, predictions, questions_path, predictions_path)
    try:
        return score(questions, predictions)
    except ValueError as err:
        raise DataError(questions_path, str(err)) from None


def _check_ids_match(questions: Sequence[Question], predictions: Mapping[str, Prediction],
                     questions_path: str | os.PathLike, predictions_path: str | os.PathLike) -> None:
    """A predictions file that answers none of the questions is a mistake (the wrong file, or ids written
    differently), not a 0% result: raise :class:`DataError` naming it."""
    if not predictions:
        raise DataError(predictions_path, "no predictions: the file is empty")
    if questions and not any(q.id in predictions for q in questions):
        reason = (f"none of its {len(predictions)} prediction ids matches a question id of "
                  f"{Path(questions_path).name} (e.g. prediction {next(iter(predictions))!r}, question "
                  f"{questions[0].id!r})")
        raise DataError(predictions_path, reason)


def write_predictions(path: str | os.PathLike, predictions: Mapping[str, object], kind: str = "text") -> Path:
    """Write ``{id: value}`` as prediction JSONL with one answer key ``kind`` (see :data:`ANSWER_KEYS`)."""
    if kind not in ANSWER_KEYS:
        raise ValueError(f"kind must be one of {ANSWER_KEYS}")
    return write_jsonl(path, ({"id": k, kind: v} for k, v in predictions.items()))
