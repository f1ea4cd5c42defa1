"""Data parallelism of the bridge, run for real on CPU: ``accelerate launch --multi_gpu --num_processes 2``, which on
a machine without GPUs starts two CPU processes over gloo (``--cpu`` alone would start one: accelerate spawns
several CPU processes only through MPI), on a tiny LLaMA. Two processes follow the same steps as one (same global batch, losses equal within 1e-5, each process
half of every batch), every file is written by the main process only, a run resumes under two processes, and
sharded evaluation merges into the one-process predictions."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from bridge_fixtures import tiny_llama
from test_bridge_train import _questions
from test_export import exported, fake_run  # noqa: F401 (fixtures)

from bridge.config import load_config
from bridge.qa import feature_cache

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("bridge_parallel_worker.py")
LOSS_TOLERANCE = 1e-5  # two all-reduced halves against one sum: float32 rounding only

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, log: Path, *args: str) -> dict:
    """Run the worker under ``accelerate launch --cpu`` (or alone for 1 process); its summary."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    if processes == 1:
        command = [sys.executable, str(WORKER), str(log), *args]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(_free_port()), str(WORKER), str(log), *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("SUMMARY "))
    return json.loads(line.removeprefix("SUMMARY "))


def writes(log: Path) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for line in log.read_text().splitlines():
        record = json.loads(line)
        out.setdefault(record["path"], set()).add(record["rank"])
    return out


@pytest.fixture(scope="module")
def setup(exported, fake_run, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("parallel")
    data = fake_run.parent / "data"
    overrides = [
        "encoder.kind=sefar", f"encoder.export={exported}", "encoder.feature_dtype=float32",
        f"data.train_questions={_questions(root / 'train.jsonl', 'train')}",
        f"data.test_questions={_questions(root / 'test.jsonl', 'test')}",
        f"data.train_list={data / 'val.txt'}", f"data.test_list={data / 'val.txt'}", f"data.videos={data / 'videos'}",
        f"data.features={root / 'features'}", "adapter.num_layers=1", "adapter.num_queries=4", "adapter.max_frames=8",
        "adapter.dropout=0", f"llm.path={tiny_llama(root / 'llama')}", "train.steps=4", "train.batch_size=5",
        "train.save_every=2", "train.log_every=1", "train.warmup_steps=1",
    ]
    cfg = load_config(None, [*overrides, f"out={root / 'unused'}"])
    feature_cache(cfg, "train", root / "features")  # one cache for every run, extracted once here
    return root, overrides


@pytest.fixture(scope="module")
def single(setup) -> tuple[Path, dict]:
    """The run in one process, trained once for the module: the reference of the two-process runs, and the run
    that the evaluation tests score."""
    root, overrides = setup
    return root / "one", launch(1, root / "one.jsonl", "train", *overrides, f"out={root / 'one'}")


def test_two_processes_take_the_steps_of_one(setup, single):
    root, overrides = setup
    one = single[1]
    two = launch(2, root / "two.jsonl", "train", *overrides, f"out={root / 'two'}")
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["examples_per_rank"] == [20] and two["examples_per_rank"] == [12, 8]  # 5 a step: 3 + 2
    assert len(two["losses"]) == 4
    assert two["losses"] == pytest.approx(one["losses"], abs=LOSS_TOLERANCE)
    recorded = json.loads((root / "two" / "train.json").read_text())
    assert recorded["world_size"] == 2 and recorded["examples_per_rank"] == [12, 8]
    written = writes(root / "two.jsonl")
    run_files = {p: ranks for p, ranks in written.items() if Path(p).is_relative_to(root / "two")}
    assert run_files and all(ranks == {0} for ranks in run_files.values()), run_files
    for name in ("config.yaml", "prompt.txt", "losses.json", "train.json", "checkpoints/last.safetensors",
                 "adapter/adapter.safetensors", "adapter/config.json"):
        assert str(root / "two" / name) in run_files, name


def test_a_run_resumes_under_two_processes(setup, single):
    root, overrides = setup
    straight = single[1]
    killed = [*overrides, f"out={root / 'killed'}"]
    stopped = launch(2, root / "first.jsonl", "train-until", "2", *killed)
    assert stopped["stopped"] and stopped["step"] == 2 and not (root / "killed" / "adapter").exists()
    resumed = launch(2, root / "resumed.jsonl", "train", *killed)
    assert resumed["losses"] == pytest.approx(straight["losses"], abs=LOSS_TOLERANCE)


def _predictions(folder: Path) -> dict[str, list[dict]]:
    return {f.name: [json.loads(line) for line in f.read_text().splitlines()]
            for f in sorted(folder.glob("predictions_*.jsonl"))}


def test_sharded_evaluation_merges_into_the_predictions_of_one_process(setup, single):
    root, overrides = setup
    run = single[0]
    test_questions = next(o.split("=", 1)[1] for o in overrides if o.startswith("data.test_questions="))
    methods = "likelihood,letter,generate"
    one = launch(1, root / "eval1.jsonl", "eval", str(run), test_questions, str(root / "eval1"), methods, "2")
    two = launch(2, root / "eval2.jsonl", "eval", str(run), test_questions, str(root / "eval2"), methods, "2")
    alone, merged = _predictions(root / "eval1"), _predictions(root / "eval2")
    assert set(alone) == {f"predictions_{m}.jsonl" for m in
                          ("likelihood_sum", "likelihood_mean", "letter", "generate")} == set(merged)
    for name, rows in alone.items():
        assert [r["id"] for r in merged[name]] == [r["id"] for r in rows] and len(rows) == 6, name
        for a, b in zip(rows, merged[name]):
            if "text" in a:
                assert a["text"] == b["text"]
            else:
                assert b["loglikelihoods"] == pytest.approx(a["loglikelihoods"], abs=1e-5)
    for method, result in one["methods"].items():
        assert two["methods"][method]["accuracy"] == result["accuracy"], method
    written = writes(root / "eval2.jsonl")
    out_files = {p: ranks for p, ranks in written.items() if Path(p).is_relative_to(root / "eval2")}
    assert one["processes"] == 1 and two["processes"] == 2
    for name in ("predictions_letter.jsonl", "report_generate.json", "results.json"):
        assert str(root / "eval2" / name) in out_files, name
    assert all(ranks == {0} for ranks in out_files.values()), out_files
