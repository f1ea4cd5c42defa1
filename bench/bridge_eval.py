"""Bridge evaluation speed: likelihood scoring one question at a time against batched scoring, same scores.

    python -m bench.bridge_eval                       # 200 questions, embedded SmolLM2, quickstart adapter shape

The baseline is the scoring the evaluation did before batching: per question, the adapter on its clip, then
:meth:`bridge.model.VideoLLM.option_loglikelihoods` (the prompt once, its options batched over its KV cache). The
batched runs go through :func:`bridge.evaluate.evaluate` (likelihood method, CircularEval rotations, the
direction-pair siblings as extra options, as the quickstart scores) at each ``--batch-sizes`` value. Every run's
scores are compared with the baseline's (largest absolute difference of the sum and mean log-likelihoods).

Nothing needs the quickstart's outputs: the questions are Gym-QA element questions over SynGym's class names
(4 options, seeded random distractors), each on its own clip of random features in the SeFAR tiny export's cache
layout (dual-level 2-2-4, 16 patches, width 96), and the adapter is an untrained one of the quickstart's shape
(``configs/bridge/syngym_smollm2.yaml``: the embedded MiniLM Q-Former, 2 layers, 8 queries; without its fused-feature
token, one visual token of about 100 fewer); scoring time does not
depend on the weights. CPU numbers on a shared machine vary with its load: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from bridge.adapter import AdapterConfig, QFormerAdapter
from bridge.evaluate import BATCH_SIZE, evaluate
from bridge.llm import LLMConfig, load_llm
from bridge.model import VideoLLM
from bridge.shards import Shards
from common.results import Table, provenance, write_result
from encoder.data.sampling import ElementLayout
from encoder.data.syngym import CLASSES, direction_pairs
from gymqa.build import STEMS
from gymqa.question import Question, write_questions
from gymqa.score import read_predictions

COMBO, PATCHES, WIDTH = "2-2-4", 16, 96  # the SeFAR tiny export of the quickstart (64 px, patch 16)


class RandomFeatures:
    """A feature cache stand-in: seeded random features of any clip id, in the cache layout."""

    def __init__(self, clip_ids: list[str], seed: int = 0) -> None:
        self.layout = [list(e) for e in ElementLayout.from_combo(COMBO).elements]
        self.width, self.root, self.manifest = WIDTH, Path("random-features"), {"skipped": {}}
        g = torch.Generator().manual_seed(seed)
        self.features = {}
        for cid in clip_ids:
            f = {f"element_tokens.{i}": torch.randn(len(e), PATCHES, WIDTH, generator=g)
                 for i, e in enumerate(self.layout)}
            self.features[cid] = f | {"element_cls": torch.randn(len(self.layout), WIDTH, generator=g),
                                      "fused": torch.randn(WIDTH, generator=g)}

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self.features

    def __getitem__(self, clip_id: str) -> dict:
        return self.features[clip_id]


def questions(n: int, seed: int = 0) -> list[Question]:
    rng = random.Random(seed)
    names = [c.name for c in CLASSES]
    out = []
    for i in range(n):
        options = rng.sample(names, 4)
        out.append(Question(id=f"q{i:04d}", clip_id=f"clip{i:04d}", question=STEMS["element"], options=tuple(options),
                            answer=rng.randrange(4), type="element", level="element", split="test"))
    return out


def pair_names() -> dict[str, str]:
    out = {}
    for forward, backward in direction_pairs():
        out[CLASSES[forward].name], out[CLASSES[backward].name] = CLASSES[backward].name, CLASSES[forward].name
    return out


def one_at_a_time(model: VideoLLM, cache: RandomFeatures, qs: list[Question], pairs: dict) -> dict:
    """The evaluation's likelihood scoring before batching: ``{id: (sums, means)}`` over each question's options."""
    out = {}
    for q in qs:
        options = list(q.options)
        sibling = pairs.get(q.answer_text)
        if sibling is not None and sibling not in options:
            options.append(sibling)
        continuations = [model.template.with_answer(q.question, o)[1] for o in options]
        queries = model.clip_queries(cache[q.clip_id], cache.layout, True, q.question)
        sums, means = model.option_loglikelihoods(queries, model.template.render(q.question), continuations)
        out[q.id] = (sums[: len(q.options)], means[: len(q.options)])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", default="embedded", help="LLM folder / GGUF (default: embedded SmolLM2)")
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--batch-sizes", default="4,8,16,32", help="comma-separated batch sizes to time")
    parser.add_argument("--queries", type=int, default=8, help="adapter query tokens (the quickstart's 8)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="bench/results/bridge_eval.json")
    args = parser.parse_args()
    started = provenance()
    if args.threads:
        torch.set_num_threads(args.threads)
    llm = load_llm(LLMConfig(path=args.llm))
    torch.manual_seed(0)
    adapter = QFormerAdapter(AdapterConfig(feature_dim=WIDTH, llm_width=llm.width, num_layers=2,
                                           num_queries=args.queries, cross_attention_frequency=1))
    model = VideoLLM(adapter, llm).eval()
    qs, pairs = questions(args.questions), pair_names()
    cache = RandomFeatures([q.clip_id for q in qs])

    began = time.perf_counter()
    reference = one_at_a_time(model, cache, qs, pairs)
    baseline_s = time.perf_counter() - began
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_questions(Path(tmp) / "questions.jsonl", qs)
        for size in [int(s) for s in args.batch_sizes.split(",")]:
            began = time.perf_counter()
            evaluate(model, cache, path, Path(tmp) / f"b{size}", methods=("likelihood",), circular=True,
                     direction_pairs=pairs, batch_size=size, shards=Shards())
            seconds = time.perf_counter() - began
            diff = {}
            for i, name in enumerate(("likelihood_sum", "likelihood_mean")):
                predictions = read_predictions(Path(tmp) / f"b{size}" / f"predictions_{name}.jsonl")
                diff[name] = max(abs(a - b) for q in qs for a, b in zip(predictions[q.id].value, reference[q.id][i]))
            runs[size] = {"seconds": round(seconds, 2), "questions_per_s": round(len(qs) / seconds, 2),
                          "speedup": round(baseline_s / seconds, 2), "max_abs_difference": diff}
            print(f"batch {size}: {runs[size]}")
    base_qps = len(qs) / baseline_s
    largest = max(abs(v) for sums, _ in reference.values() for v in sums)
    table = Table("", ["scoring", "batch", "s", "questions/s", "speed-up", "max abs difference: sum",
                       "max abs difference: mean per token"])
    table.add("one question at a time", 1, f"{baseline_s:.1f}", f"{base_qps:.2f}", "1.00x", "-", "-")
    for size, r in runs.items():
        table.add("batched (bridge.evaluate)", size, f"{r['seconds']:.1f}", f"{r['questions_per_s']:.2f}",
                  f"{r['speedup']:.2f}x", *(f"{r['max_abs_difference'][k]:.1e}" for k in ("likelihood_sum",
                                                                                          "likelihood_mean")))
    table.notes = (f"{len(qs)} element questions (4 options, CircularEval, direction-pair siblings), random features "
                   f"({COMBO}, {PATCHES} patches, width {WIDTH}), untrained adapter ({args.queries} queries); LLM "
                   f"{Path(llm.source).name}, {torch.get_num_threads()} threads. Default eval.batch_size: {BATCH_SIZE}. "
                   f"Sums of log-likelihoods reach {largest:.0f} in size: the differences are float32 rounding.")
    data = {"questions": len(qs), "llm": Path(llm.source).name, "threads": torch.get_num_threads(),
            "adapter_queries": args.queries, "default_batch_size": BATCH_SIZE,
            "one_at_a_time": {"seconds": round(baseline_s, 2), "questions_per_s": round(base_qps, 2)},
            "batched": {str(k): v for k, v in runs.items()}}
    write_result(args.out, "Bridge evaluation: batched likelihood scoring vs one question at a time", [table], data,
                 started=started)


if __name__ == "__main__":
    main()
