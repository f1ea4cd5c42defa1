"""Score an adapter on Gym-QA questions with every method, as predictions JSONL that ``sefar gymqa score`` reads.

    sefar bridge eval RUN_OR_EXPORT --questions test.jsonl [--method likelihood|generate|letter|all]

Methods (one predictions file each, ``OUT/predictions_<method>.jsonl``; :func:`gymqa.score.score` scores them,
an unparseable or empty answer counting as wrong):

* ``likelihood`` (two files: ``likelihood_sum`` and ``likelihood_mean``): the prompt is the video and the
  question's stem without options; each option's text (+ end of turn) is scored as the answer, the prompt computed once
  and the options batched over its KV cache (:meth:`bridge.model.VideoLLM.option_loglikelihoods`). Scores do not
  depend on the options' order, so the rotations of CircularEval reuse them.
* ``generate``: the prompt lists the lettered options; the greedy answer is parsed by :func:`gymqa.parse_answer`.
* ``letter``: the same prompt; the log-probabilities of the option letters as the next token, in one pass.

An adapter with the instruction option (InstructBLIP) also gets the question asked: the stem for ``likelihood``,
the lettered question for ``generate`` and ``letter``.

With ``circular`` every question's rotations are answered too (CircularEval). The report adds SynGym's
direction-pair check when ``direction_pairs`` is given: for test clips of a forward/backward pair, how often the
true name scores above its time-reversed sibling's (chance 50%).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from bridge.featurecache import FeatureCache, check_feature_width
from bridge.limits import TextLimits
from bridge.model import VideoLLM
from bridge.qa import letter_prompt_question, read_question_set
from common.results import Table
from common.results import format_table as format_markdown
from common.jsonio import write_json, write_jsonl
from gymqa.question import LETTERS, Question
from gymqa.rotate import rotate
from gymqa.score import ScoreReport, read_predictions, score

__all__ = ["METHOD_FILES", "evaluate", "format_table", "results_table"]

METHOD_FILES = {"likelihood": ("likelihood_sum", "likelihood_mean"), "generate": ("generate",), "letter": ("letter",)}


def _likelihood(model, cache, questions, use_cls, pairs) -> tuple[dict, dict, dict]:
    """Per question id: sum / mean option scores (rotations by option text); the direction-pair outcomes."""
    sums, means, pair_wins = {}, {}, {}
    for q in tqdm(questions, desc="likelihood", unit="q"):
        prompt = model.template.render(q.question)
        options = list(q.options)
        sibling = pairs.get(q.answer_text)
        if sibling is not None and sibling not in options:
            options.append(sibling)
        continuations = [model.template.with_answer(q.question, o)[1] for o in options]
        queries = model.clip_queries(cache[q.clip_id], cache.layout, use_cls, q.question)
        s, m = model.option_loglikelihoods(queries, prompt, continuations)
        sums[q.id], means[q.id] = dict(zip(options, s)), dict(zip(options, m))
        if sibling is not None:
            pair_wins[q.id] = means[q.id][q.answer_text] > means[q.id][sibling]
    return sums, means, pair_wins


def _letter_ids(model: VideoLLM, question: str, count: int) -> list[int]:
    return [model.tokenizer(model.template.with_answer(question, LETTERS[i])[1], add_special_tokens=False)
            ["input_ids"][0] for i in range(count)]


def _answer(model, cache, q: Question, method: str, use_cls: bool, max_new_tokens: int) -> object:
    text = letter_prompt_question(q)
    prompt = model.template.render(text)
    queries = model.clip_queries(cache[q.clip_id], cache.layout, use_cls, text)
    if method == "generate":
        return model.generate(queries, prompt, max_new_tokens)
    logprobs = model.next_token_logprobs(queries, prompt)
    return [float(logprobs[i]) for i in _letter_ids(model, text, len(q.options))]


def _write_predictions(path: Path, rows: list[dict]) -> None:
    write_jsonl(path, rows)  # refuses NaN: a score that is not a number is a bug, never written


def evaluate(model: VideoLLM, cache: FeatureCache, questions_path: str | os.PathLike, out: str | os.PathLike, *,
             methods: Sequence[str] = ("likelihood",), types: Sequence[str] = ("element",),
             use_cls: bool = True,
             circular: bool = True, max_questions: int | None = None, max_new_tokens: int = 24,
             direction_pairs: dict[str, str] | None = None, limits: TextLimits | None = None) -> dict:
    """Answer the questions with each method, write predictions and reports into ``out``; returns the summary.

    ``limits``: the longest question and option allowed, in tokens (checked before any model work)."""
    out = Path(out)
    limits = limits or TextLimits()
    qs = read_question_set(questions_path, types, cache, max_questions, limits)
    qs.check_lengths(limits, model.tokenizer)
    check_feature_width(cache, model.adapter.cfg.feature_dim)
    originals = qs.questions
    everything = rotate(originals) if circular else originals
    model.eval()
    summary = {"questions": len(originals), "skipped": qs.skipped, "methods": {}}
    if "likelihood" in methods:
        began = time.perf_counter()
        sums, means, wins = _likelihood(model, cache, originals, use_cls, direction_pairs or {})
        seconds = time.perf_counter() - began
        for name, scores in (("likelihood_sum", sums), ("likelihood_mean", means)):
            rows = [{"id": q.id, "loglikelihoods": [scores[q.base_id][o] for o in q.options]} for q in everything]
            extra = {"direction_pairs": len(wins), "pair_accuracy": sum(wins.values()) / len(wins) if wins else None}
            summary["methods"][name] = _score(out, name, everything, rows, seconds, extra)
    for method in (m for m in methods if m in ("generate", "letter")):
        began = time.perf_counter()
        key = "text" if method == "generate" else "loglikelihoods"
        rows = [{"id": q.id, key: _answer(model, cache, q, method, use_cls, max_new_tokens)}
                for q in tqdm(everything, desc=method, unit="q")]
        summary["methods"][method] = _score(out, method, everything, rows, time.perf_counter() - began, {})
    write_json(out / "results.json", summary, indent=1)
    return summary


def _score(out: Path, name: str, questions: list[Question], rows: list[dict], seconds: float, extra: dict) -> dict:
    path = out / f"predictions_{name}.jsonl"
    _write_predictions(path, rows)
    report: ScoreReport = score(questions, read_predictions(path))  # scored from the file, as `gymqa score` does
    report.write(out / f"report_{name}.json", out / f"report_{name}.md")
    return {"accuracy": report.overall.accuracy, "circular": (report.circular or {}).get("accuracy"),
            "answered": report.answered, "n": report.overall.n, "seconds": round(seconds, 1),
            "letters": {k: v["frequency"] for k, v in report.letters.items()}, **extra,
            "by_type": {k: t.accuracy for k, t in report.by_type.items()}}


def results_table(rows: Sequence[tuple[str, dict]], title: str = "") -> Table:
    """A row per (label, method) of each evaluation summary."""
    table = Table(title, ["model", "method", "questions", "accuracy", "CircularEval",
                          "direction pairs (true vs reversed)", "s"])
    for label, summary in rows:
        for method, r in summary["methods"].items():
            circ = "-" if r["circular"] is None else f"{100 * r['circular']:.1f}"
            pair = "-" if r.get("pair_accuracy") is None else f"{100 * r['pair_accuracy']:.1f} ({r['direction_pairs']})"
            table.add(label, method, r["n"], f"{100 * r['accuracy']:.1f}", circ, pair, f"{r['seconds']:.0f}")
    return table


def format_table(rows: Sequence[tuple[str, dict]]) -> str:
    """One Markdown table: a row per (label, method summary)."""
    return format_markdown(results_table(rows))
