"""Interrupt safety: ``kill -9`` at random points of ``data synth``, ``data prepare``, ``encoder train`` and
``bridge features``; the rerun completes and gives the same result as an uninterrupted run (the same files, byte for
byte, safetensors by content; for training also the same losses), and at every kill each file a reader can see is
whole (temporaries are hidden ``.name.tmp`` files or ``*.tmp``, removed by the rerun).

The kill points are drawn from a seeded generator as fractions of the uninterrupted run's duration, so every run
of the suite interrupts the same way relative to the machine's speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from videos import write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
KILLS = 3  # interrupted attempts before the run that is let finish
SEED = 20261130


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _sefar(*args: str) -> list[str]:
    return [sys.executable, "-m", "sefar", *args]


def _run(argv: list[str]) -> float:
    """Run to completion (it must succeed); returns the seconds it took."""
    began = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return time.perf_counter() - began


def _run_killed(argv: list[str], after_s: float) -> bool:
    """Start ``argv`` in its own process group and SIGKILL the whole group (workers too) after ``after_s``
    seconds; ``False`` when it finished first."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=after_s)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") or path.name.endswith(".tmp")


def _assert_whole(path: Path) -> None:
    """Every file of a known kind that a reader can see parses completely."""
    from safetensors import safe_open

    from encoder.data.video import verify_video

    suffix = path.suffix
    if suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
    elif suffix == ".jsonl":
        text = path.read_text(encoding="utf-8")
        assert not text or text.endswith("\n"), f"{path}: last line cut"
        for line in text.splitlines():
            json.loads(line)
    elif suffix in (".txt", ".yaml"):
        text = path.read_text(encoding="utf-8")
        assert not text or text.endswith("\n"), f"{path}: last line cut"
    elif suffix == ".mp4":
        verify_video(path, deep=True)
    elif suffix == ".safetensors":
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                f.get_tensor(key)


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(_is_temporary(q) for q in
                                                                           p.relative_to(folder).parents
                                                                           if q.name) and not _is_temporary(p))


def _digest(path: Path) -> str:
    """SHA-256 of a file; of its metadata and tensors for safetensors, whose header lists metadata keys in an
    order that differs from process to process."""
    if path.suffix != ".safetensors":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    import torch
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(path), "pt") as f:
        h.update(json.dumps(f.metadata(), sort_keys=True).encode())
        for key in sorted(f.keys()):
            tensor = f.get_tensor(key)
            h.update(f"{key}{tensor.dtype}{list(tensor.shape)}".encode())
            h.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _hashes(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {str(p.relative_to(folder)): _digest(p)
            for p in _visible_files(folder) if not str(p.relative_to(folder)).startswith(skip)}


def _interrupt_then_finish(argv: list[str], out: Path, full_s: float, seed: int) -> int:
    """Kill ``argv`` ``KILLS`` times at random fractions of ``full_s`` (checking what is on disk after each),
    then let it finish; returns how many attempts were really killed."""
    rng = random.Random(seed)
    killed = 0
    for _ in range(KILLS):
        if _run_killed(argv, rng.uniform(0.15, 0.95) * full_s):
            killed += 1
        if out.is_dir():
            for path in _visible_files(out):
                _assert_whole(path)
    _run(argv)
    assert not [p for p in out.rglob("*") if _is_temporary(p)], "the finished rerun left temporaries"
    return killed


@pytest.mark.slow
def test_kill_9_during_data_synth(tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    args = ("data", "synth", "--size", "tiny", "--workers", "2", "--broadcast", "1")
    full_s = _run(_sefar(*args, "--out", str(reference)))
    killed = _interrupt_then_finish(_sefar(*args, "--out", str(interrupted)), interrupted, full_s, SEED)
    assert killed >= 1
    assert _hashes(interrupted) == _hashes(reference)


@pytest.fixture(scope="module")
def broadcasts(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("broadcasts") / "syn"
    _run(_sefar("data", "synth", "--size", "tiny", "--workers", "2", "--broadcast", "2", "--out", str(out)))
    return out / "broadcast"


@pytest.mark.slow
def test_kill_9_during_data_prepare(tmp_path, broadcasts):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    args = ("data", "prepare", "finegym", "--videos", str(broadcasts), "--annotations",
            str(broadcasts / "annotation.json"), "--workers", "2", "--short-side", "0")
    full_s = _run(_sefar(*args, "--out", str(reference)))
    killed = _interrupt_then_finish(_sefar(*args, "--out", str(interrupted)), interrupted, full_s, SEED + 1)
    assert killed >= 1
    # the summary counts what the last run wrote or found done; the clips are what must be equal
    assert _hashes(interrupted, skip=("prepare_summary",)) == _hashes(reference, skip=("prepare_summary",))
    summary = json.loads((interrupted / "prepare_summary.json").read_text())
    assert summary["ok"] and summary["elements"]["written"] + summary["elements"]["skipped"] == len(
        list((reference / "elements").glob("*.mp4")))


def _train_args(data: Path, out: Path) -> list[str]:
    return _sefar("encoder", "train", "-", f"data.root={data}", "data.categories=null", "data.label_ratio=0.34",
                  "data.num_workers=0", f"out={out}", "model.img_size=32", "optim.batch_size=4",
                  "optim.micro_batch_size=2", "optim.epochs=2", "optim.steps_per_epoch=4", "optim.milestones=[1]",
                  "ssl.supervised_epochs=0", "ssl.ramp_epochs=1", "ssl.passes=3", "log_every=1", "save_every=2",
                  "ssl.ema_decay=0.9")


def _losses(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> tuple[Path, Path, float]:
    """``(toy dataset, an uninterrupted training run on it, the seconds it took)``."""
    root = tmp_path_factory.mktemp("train")
    data = write_toy_dataset(root / "toy")
    full_s = _run(_train_args(data, root / "reference"))
    return data, root / "reference", full_s


@pytest.mark.slow
def test_kill_9_during_encoder_train(tmp_path, toy_run):
    data, reference, full_s = toy_run
    interrupted = tmp_path / "interrupted"
    killed = _interrupt_then_finish(_train_args(data, interrupted), interrupted, full_s, SEED + 2)
    assert killed >= 1
    assert _losses(interrupted) == _losses(reference)
    assert [row["step"] for row in _losses(interrupted)] == list(range(1, 9))
    final = ("final/student.safetensors", "final/teacher.safetensors")
    assert {k: v for k, v in _hashes(interrupted).items() if k in final} == {
        k: v for k, v in _hashes(reference).items() if k in final}
    results = [json.loads((run / "final" / "results.json").read_text()) for run in (interrupted, reference)]
    assert results[0]["teacher"] == results[1]["teacher"] and results[0]["student"] == results[1]["student"]


def _features_args(export: Path, list_path: Path, videos: Path, out: Path) -> list[str]:
    return _sefar("bridge", "features", str(export), str(list_path), str(out), "--videos-root", str(videos),
                  "--batch-size", "2", "--shard-size", "2", "--workers", "0", "--dtype", "float32")


@pytest.mark.slow
def test_kill_9_during_feature_extraction(tmp_path, toy_run):
    data, run, _ = toy_run
    export = tmp_path / "export"
    _run(_sefar("encoder", "export", str(run), str(export)))
    list_path = data / "val_element.txt"
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    full_s = _run(_features_args(export, list_path, data / "videos", reference))
    killed = _interrupt_then_finish(_features_args(export, list_path, data / "videos", interrupted), interrupted,
                                    full_s, SEED + 3)
    assert killed >= 1
    assert _hashes(interrupted) == _hashes(reference)
    manifest = json.loads((interrupted / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["done_shards"]) == manifest["num_shards"] == 4


def test_metrics_of_a_run_killed_before_its_first_checkpoint_are_dropped(tmp_path):
    from encoder.train import _truncate_metrics

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')  # last line cut
    _truncate_metrics(metrics, 2)
    assert metrics.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    _truncate_metrics(metrics, 0)  # a fresh start: nothing logged before survives
    assert metrics.read_text() == ""
