"""Gym-QA speed: build every FineGym QA set, read questions, score 100,000 predictions.

    python -m bench.gymqa_speed [--data DIR] [--out bench/results/gymqa.json] [--repeats 3]

Needs the real FineGym lists and the SeFAR labeled splits (``../shared/data`` beside the checkout by default);
without them it says so and exits 0. Prints a Markdown table and writes the numbers (best of ``--repeats``) as JSON.
Targets: building Gym-QA-99 and Gym-QA-288 with every question type <= 5 s; scoring 100,000 predictions <= 2 s.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from common.results import Table, provenance, write_result
from gymqa.build import BuildConfig, build_finegym
from gymqa.question import LETTERS, TYPES, Question, write_questions
from gymqa.rotate import rotate
from gymqa.score import read_predictions, score, score_files
from gymqa.stats import read_questions

DEFAULT_DATA = ROOT.parent / "shared" / "data"
N_PREDICTIONS = 100_000


def best_of(repeats: int, fn: Callable[[], object]) -> tuple[float, float, object]:
    """Fastest wall time and fastest CPU time (this process) of ``repeats`` calls, and the last result."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), result


def reference_loop() -> float:
    """CPU seconds of a fixed pure-Python loop (sum of 10**7 squares), to compare machines and loads."""
    start = time.process_time()
    sum(i * i for i in range(10**7))
    return time.process_time() - start


def prediction_record(q: Question, rng: random.Random) -> dict:
    """A random prediction in one of the four accepted forms."""
    n = len(q.options)
    form = rng.randrange(4)
    if form == 0:
        return {"id": q.id, "letter": LETTERS[rng.randrange(n)]}
    if form == 1:
        return {"id": q.id, "text": f"The answer is {q.options[rng.randrange(n)]}."}
    if form == 2:
        return {"id": q.id, "index": rng.randrange(n)}
    return {"id": q.id, "loglikelihoods": [round(rng.uniform(-9, 0), 4) for _ in range(n)]}


def run(data: Path, repeats: int) -> list[dict]:
    finegym, sefar = data / "finegym", data / "sefar-gymqa"
    rows = []

    def timed(task: str, fn: Callable[[], object], items: Callable[[object], int],
              target: float | None = None) -> object:
        wall, cpu, result = best_of(repeats, fn)
        rows.append({"task": task, "items": items(result), "seconds": round(wall, 4), "cpu_seconds": round(cpu, 4),
                     **({"target_seconds": target} if target is not None else {})})
        return result

    def count(built: object) -> int:
        return sum(len(r.train) + len(r.test) for r in built.values())

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        timed("build Gym-QA-99 + Gym-QA-288: element questions, SeFAR 5% lists, written",
              lambda: build_finegym(finegym, out / "paper", sefar_dir=sefar), count)
        config = BuildConfig(types=TYPES, strategy="same-set")
        built = timed("build Gym-QA-99 + Gym-QA-288: all 4 question types, written",
                      lambda: build_finegym(finegym, out / "all", config=config), count, target=5.0)
        questions = rotate(built["gymqa288"].test + built["gymqa99"].test)[:N_PREDICTIONS]
        write_questions(out / "q.jsonl", questions)
        rng = random.Random(0)
        (out / "p.jsonl").write_text("".join(json.dumps(prediction_record(q, rng)) + "\n" for q in questions))
        loaded = timed("read questions JSONL", lambda: read_questions(out / "q.jsonl"), len)
        timed("score predictions (read predictions JSONL, parse, report, CircularEval)",
              lambda: score(loaded, read_predictions(out / "p.jsonl")), lambda r: r.questions,
              target=2.0)
        timed("score_files: read questions + predictions, score", lambda: score_files(out / "q.jsonl", out / "p.jsonl"),
              lambda r: r.questions)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with finegym/ and sefar-gymqa/")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gymqa.json", help="JSON results file")
    parser.add_argument("--repeats", type=int, default=3, help="runs per task; the fastest counts (default: 3)")
    args = parser.parse_args(argv)
    if not (args.data / "finegym").is_dir() or not (args.data / "sefar-gymqa").is_dir():
        print(f"skipped: the FineGym lists and SeFAR splits are not in {args.data} (need finegym/ and sefar-gymqa/)")
        return 0
    started = provenance()
    rows = run(args.data, args.repeats)
    table = Table("", ["task", "items", "wall s", "CPU s", "target"])
    for row in rows:
        target = f"<= {row['target_seconds']:.0f} s" if "target_seconds" in row else "-"
        table.add(row["task"], row["items"], f"{row['seconds']:.3f}", f"{row['cpu_seconds']:.3f}", target)
    loop = round(reference_loop(), 3)
    table.notes = (f"Best of {args.repeats} runs. A fixed pure-Python loop (sum of 10**7 squares) took {loop} CPU-s "
                   "on this machine at the time, to compare machines and loads.")
    write_result(args.out, "Gym-QA: build and score speed (real FineGym lists)", [table],
                 {"repeats": args.repeats, "reference_loop_seconds": loop, "results": rows}, started=started)
    return 0 if all(r["seconds"] <= r.get("target_seconds", float("inf")) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
