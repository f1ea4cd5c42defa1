"""The training recipe: resume is exact, signals checkpoint, configs validate, DDP matches one process."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from encoder.config import load_config
from common.errors import ConfigError
from tests.videos import write_toy_dataset

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs" / "encoder").glob("*.yaml"))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy"))


def tiny_overrides(root, out, *extra):
    return [
        f"data.root={root}", "data.categories=null", "data.label_ratio=0.34", "data.num_workers=0",
        f"out={out}", "model.img_size=32", "optim.batch_size=4", "optim.micro_batch_size=2",
        "optim.epochs=2", "optim.steps_per_epoch=3", "ssl.supervised_epochs=0", "ssl.ramp_epochs=1",
        "ssl.passes=3", "log_every=1", "save_every=2", "ssl.ema_decay=0.9", *extra,
    ]


def losses(run: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["supervised"], r["unlabeled"], r["mix"]) for r in rows]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_validates(config):
    cfg = load_config(config)
    assert cfg.optim.batch_size % cfg.optim.micro_batch_size == 0


def test_config_errors_are_collected_with_fixes():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["ssl.mode=bogus", "model.combo=2-x", "ssl.passes=1", "optim.micro_batch_size=5"])
    text = str(err.value)
    assert "ssl.mode='bogus'" in text and "model.combo" in text and "micro_batch_size" in text
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/config.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["ssl.mode"])


def test_resume_gives_identical_losses(toy, tmp_path):
    from encoder.train import train

    full = tmp_path / "full"
    train(load_config(None, tiny_overrides(toy, full)))
    part = tmp_path / "part"
    first = train(load_config(None, tiny_overrides(toy, part, "max_steps=4")))
    assert first["step"] == 4
    train(load_config(None, tiny_overrides(toy, part)))
    assert losses(part) == losses(full)
    assert [s for s, *_ in losses(part)] == [1, 2, 3, 4, 5, 6]
    assert (part / "final" / "teacher.safetensors").is_file()
    assert sorted(p.name for p in (part / "checkpoints").glob("step_*")) == ["step_0000004", "step_0000006"]


def test_signal_saves_a_checkpoint_and_resumes(toy, tmp_path, monkeypatch):
    import encoder.train as recipe

    calls = {"n": 0}
    original = recipe.ema_update

    def ema_then_signal(*args, **kwargs):
        original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(recipe, "ema_update", ema_then_signal)
    run = tmp_path / "sig"
    result = recipe.train(load_config(None, tiny_overrides(toy, run, "ssl.mode=supervised")))
    assert result == {"interrupted": True, "step": 1}
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 1
    monkeypatch.setattr(recipe, "ema_update", original)
    assert recipe.train(load_config(None, tiny_overrides(toy, run, "ssl.mode=supervised")))["step"] == 6


def test_fixmatch_mode_runs(toy, tmp_path):
    from encoder.train import train

    run = tmp_path / "fm"
    train(load_config(None, tiny_overrides(toy, run, "ssl.mode=fixmatch", "ssl.threshold=0.5", "max_steps=2")))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["mean_weight"] <= 1.0 for r in rows)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_match_one(toy, tmp_path):
    """Two gloo processes with half the micro-batch each = one process with the same global batch."""
    # a patchify stem: BatchNorm (the tiny config's conv stem) sees per-process batches under DDP
    common = ["ssl.mode=supervised", "model.stem=patch", "model.drop_path_rate=0", "model.head_dropout=0", "aug.flip=false",
              "optim.micro_batch_size=2", "optim.batch_size=4", "max_steps=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(nproc, out, micro):
        args = tiny_overrides(toy, out, *common, f"optim.micro_batch_size={micro}")
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
               "-m", "sefar", "encoder", "train", "--no-resume", "-", *args]
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too
            raise
        assert proc.returncode == 0, output.decode()[-3000:]
        return losses(out)

    one = run(1, tmp_path / "one", 4)
    two = run(2, tmp_path / "two", 2)
    for a, b in zip(one, two):
        assert a[0] == b[0]
        assert a[2] == pytest.approx(b[2], rel=1e-3, abs=1e-4)


def test_checkpoint_round_trip_with_adamw(tmp_path):
    """Optimizer state (AdamW's step counters and moments) and RNG states survive a checkpoint, unpickled."""
    import torch

    from encoder.train import build_model, build_optimizer, load_checkpoint, save_checkpoint

    cfg = load_config(None, ["model.img_size=32", "model.depth=1", "optim.name=adamw", "optim.lr=0.001"])
    model = build_model(cfg, 3)
    teacher = build_model(cfg, 3)
    opt = build_optimizer(cfg, model)
    model(torch.randn(2, 3, 8, 32, 32)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path, 1, model, teacher, opt, {"labeled": 1, "unlabeled": 0}, keep=2)
    expected_rng = torch.get_rng_state()
    torch.manual_seed(123)
    model2, teacher2 = build_model(cfg, 3), build_model(cfg, 3)
    opt2 = build_optimizer(cfg, model2)
    meta = load_checkpoint(path, model2, teacher2, opt2)
    assert meta["step"] == 1 and meta["consumed"] == {"labeled": 1, "unlabeled": 0}
    assert torch.equal(torch.get_rng_state(), expected_rng)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        for name in s1[k]:
            assert torch.equal(torch.as_tensor(s1[k][name]), torch.as_tensor(s2[k][name]))
    assert not list(path.glob("*.pt")) and not list(path.glob("*.pkl"))


def test_truncated_checkpoint_is_reported(tmp_path):
    from common.errors import DataError
    from encoder.train import build_model, build_optimizer, load_checkpoint, save_checkpoint

    cfg = load_config(None, ["model.img_size=32", "model.depth=1"])
    model = build_model(cfg, 3)
    path = save_checkpoint(tmp_path, 2, model, build_model(cfg, 3), build_optimizer(cfg, model), {}, keep=1)
    (path / "teacher.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(DataError, match="teacher.safetensors|unreadable"):
        load_checkpoint(path, model, build_model(cfg, 3), build_optimizer(cfg, model))
