"""Score an adapter on Gym-QA questions with every method, as predictions JSONL that ``sefar gymqa score`` reads.

    sefar bridge eval RUN_OR_EXPORT --questions test.jsonl [--method likelihood|generate|letter|all]

Methods (one predictions file each, ``OUT/predictions_<method>.jsonl``; :func:`gymqa.score.score` scores them,
an unparseable or empty answer counting as wrong):

* ``likelihood`` (two files: ``likelihood_sum`` and ``likelihood_mean``): the prompt is the video and the
  question's stem without options; each option's text (+ end of turn) is scored as the answer, every prompt and
  its options in one forward (:func:`bridge.batched.option_loglikelihoods`: options as a prefix tree after their
  prompt, under a tree attention mask). Scores do not
  depend on the options' order, so the rotations of CircularEval reuse them.
* ``generate``: the prompt lists the lettered options; the greedy answer is parsed by :func:`gymqa.parse_answer`.
* ``letter``: the same prompt; the log-probabilities of the option letters as the next token, in one pass.

An adapter with the instruction option (InstructBLIP) also gets the question asked: the stem for ``likelihood``,
the lettered question for ``generate`` and ``letter``.

Every method scores ``batch_size`` questions per LLM pass (:mod:`bridge.batched`: the same scores as one question at
a time, up to float rounding). Under ``accelerate launch`` the processes score disjoint batches and the main process
writes the merged files (:mod:`bridge.shards`), the same as one process writes.

With ``circular`` every question's rotations are answered too (CircularEval). The report adds SynGym's
direction-pair check when ``direction_pairs`` is given: for test clips of a forward/backward pair, how often the
true name scores above its time-reversed sibling's (chance 50%).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bridge import batched
from bridge.featurecache import FeatureCache, check_feature_width
from bridge.limits import TextLimits
from bridge.model import VideoLLM
from bridge.qa import letter_prompt_question, read_question_set
from bridge.shards import Shards
from bridge.tokens import visual_tokens
from common.results import Table
from common.results import format_table as format_markdown
from common.jsonio import write_json, write_jsonl
from gymqa.question import LETTERS, Question
from gymqa.rotate import rotate
from gymqa.score import ScoreReport, read_predictions, score

__all__ = ["METHOD_FILES", "evaluate", "format_table", "results_table"]

METHOD_FILES = {"likelihood": ("likelihood_sum", "likelihood_mean"), "generate": ("generate",), "letter": ("letter",)}
BATCH_SIZE = 16  # questions per LLM pass (bench/bridge_eval.py)


def _queries(model: VideoLLM, cache, qs: list[Question], texts: list[str], use_cls: bool) -> list:
    """The query embeddings ``(Q, W)`` of each question's clip (``texts``: the adapter's instructions)."""
    visual = visual_tokens([cache[q.clip_id] for q in qs], cache.layout, use_cls)
    with torch.no_grad():
        return list(model.queries(visual, model.instructions_for(texts)))


def _likelihood(model, cache, qs: list[Question], use_cls: bool, pairs: dict) -> list[tuple]:
    """Per question: its options (and the true name's time-reversed sibling), their sum and mean scores."""
    options = [[*q.options, *([s] if (s := pairs.get(q.answer_text)) and s not in q.options else [])] for q in qs]
    continuations = [[model.template.with_answer(q.question, o)[1] for o in opts] for q, opts in zip(qs, options)]
    scores = batched.option_loglikelihoods(model, _queries(model, cache, qs, [q.question for q in qs], use_cls),
                                           [model.template.render(q.question) for q in qs], continuations)
    return [(opts, sums, means) for opts, (sums, means) in zip(options, scores)]


def _letter_ids(model: VideoLLM, question: str, count: int) -> list[int]:
    return [model.tokenizer(model.template.with_answer(question, LETTERS[i])[1], add_special_tokens=False)
            ["input_ids"][0] for i in range(count)]


def _answers(model, cache, qs: list[Question], method: str, use_cls: bool, max_new_tokens: int) -> list:
    """``generate``: each question's greedy answer; ``letter``: its option letters' log-probabilities."""
    texts = [letter_prompt_question(q) for q in qs]
    queries = _queries(model, cache, qs, texts, use_cls)
    prompts = [model.template.render(t) for t in texts]
    if method == "generate":
        return batched.generate(model, queries, prompts, max_new_tokens)
    logprobs = batched.next_token_logprobs(model, queries, prompts)
    return [[float(lp[i]) for i in _letter_ids(model, t, len(q.options))] for lp, t, q in zip(logprobs, texts, qs)]


def _map_by_length(shards: Shards, qs: list[Question], batch_size: int, fn, desc: str) -> list:
    """``shards.map`` over the questions from the shortest to the longest (question and options, in characters),
    so that the rows of a batch pad little; the results come back in the order of ``qs``."""
    order = sorted(range(len(qs)), key=lambda i: len(qs[i].question) + sum(len(o) for o in qs[i].options))
    results = shards.map([qs[i] for i in order], batch_size, fn, desc)
    out: list = [None] * len(qs)
    for i, result in zip(order, results):
        out[i] = result
    return out


def _write_predictions(path: Path, rows: list[dict]) -> None:
    write_jsonl(path, rows)  # refuses NaN: a score that is not a number is a bug, never written


def evaluate(model: VideoLLM, cache: FeatureCache, questions_path: str | os.PathLike, out: str | os.PathLike, *,
             methods: Sequence[str] = ("likelihood",), types: Sequence[str] = ("element",),
             use_cls: bool = True,
             circular: bool = True, max_questions: int | None = None, max_new_tokens: int = 24,
             direction_pairs: dict[str, str] | None = None, limits: TextLimits | None = None,
             batch_size: int = BATCH_SIZE, shards: Shards | None = None) -> dict:
    """Answer the questions with each method, write predictions and reports into ``out``; returns the summary.

    ``limits``: the longest question and option allowed, in tokens (checked before any model work).
    ``batch_size``: questions per LLM pass (the scores do not depend on it beyond float rounding). ``shards``: the
    processes sharing the work (default: those of ``accelerate launch``, or this one alone); only the main one
    writes."""
    out = Path(out)
    shards = shards or Shards()
    limits = limits or TextLimits()
    qs = read_question_set(questions_path, types, cache, max_questions, limits)
    qs.check_lengths(limits, model.tokenizer)
    check_feature_width(cache, model.adapter.cfg.feature_dim,
                        model.adapter.cfg.fused_dim if model.adapter.cfg.use_fused else None)
    originals = qs.questions
    everything = rotate(originals) if circular else originals
    model.eval()
    summary = {"questions": len(originals), "skipped": qs.skipped, "processes": shards.world, "methods": {}}
    if "likelihood" in methods:
        began = time.perf_counter()
        pairs = direction_pairs or {}
        scored = _map_by_length(shards, originals, batch_size,
                                lambda b: _likelihood(model, cache, b, use_cls, pairs), "likelihood")
        seconds = time.perf_counter() - began
        sums = {q.id: dict(zip(o, s)) for q, (o, s, _) in zip(originals, scored)}
        means = {q.id: dict(zip(o, m)) for q, (o, _, m) in zip(originals, scored)}
        wins = {q.id: means[q.id][q.answer_text] > means[q.id][pairs[q.answer_text]]
                for q in originals if q.answer_text in pairs}
        for name, scores in (("likelihood_sum", sums), ("likelihood_mean", means)):
            rows = [{"id": q.id, "loglikelihoods": [scores[q.base_id][o] for o in q.options]} for q in everything]
            extra = {"direction_pairs": len(wins), "pair_accuracy": sum(wins.values()) / len(wins) if wins else None}
            summary["methods"][name] = _score(out, name, everything, rows, seconds, extra, shards)
    for method in (m for m in methods if m in ("generate", "letter")):
        began = time.perf_counter()
        key = "text" if method == "generate" else "loglikelihoods"
        answers = _map_by_length(shards, everything, batch_size,
                                 lambda b: _answers(model, cache, b, method, use_cls, max_new_tokens), method)
        rows = [{"id": q.id, key: a} for q, a in zip(everything, answers)]
        summary["methods"][method] = _score(out, method, everything, rows, time.perf_counter() - began, {}, shards)
    if shards.main:
        write_json(out / "results.json", summary, indent=1)
    return summary


def _score(out: Path, name: str, questions: list[Question], rows: list[dict], seconds: float, extra: dict,
           shards: Shards) -> dict:
    """The main process writes the predictions and the reports; every process gets the summary."""
    if not shards.main:
        return shards.share(None)
    path = out / f"predictions_{name}.jsonl"
    _write_predictions(path, rows)
    report: ScoreReport = score(questions, read_predictions(path))  # scored from the file, as `gymqa score` does
    report.write(out / f"report_{name}.json", out / f"report_{name}.md")
    return shards.share({
        "accuracy": report.overall.accuracy, "circular": (report.circular or {}).get("accuracy"),
        "answered": report.answered, "n": report.overall.n, "seconds": round(seconds, 1),
        "letters": {k: v["frequency"] for k, v in report.letters.items()}, **extra,
        "by_type": {k: t.accuracy for k, t in report.by_type.items()}})


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
