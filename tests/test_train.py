"""The training recipe: resume is exact, signals checkpoint, configs validate, DDP matches one process."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from encoder.config import load_config
from common.errors import ConfigError, DataError
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
def test_every_shipped_config_builds_its_model(config):
    """Each YAML validates and its model builds (on the meta device: shapes only, no memory, no weights read)."""
    import torch

    from encoder.run import build_model

    cfg = load_config(config)
    with torch.device("meta"):
        model = build_model(cfg, 99, pretrained=False)
    assert model.cfg.img_size == cfg.model.img_size and model.layout.combo == cfg.model.combo
    assert model.cfg.stem == (cfg.model.stem or model.cfg.stem) and model.cfg.num_classes == 99
    x = torch.empty(1, 3, model.layout.num_frames, cfg.model.img_size, cfg.model.img_size, device="meta")
    assert model(x).shape == (1, 99)


def test_config_errors_are_collected_with_fixes():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["ssl.mode=bogus", "model.combo=2-x", "ssl.passes=1", "optim.micro_batch_size=5",
                           "data.frame_jitter=2"])
    text = str(err.value)
    assert "ssl.mode='bogus'" in text and "model.combo" in text and "micro_batch_size" in text
    assert "data.frame_jitter=2.0: must be in [0, 1]" in text
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


@pytest.mark.parametrize(("threshold", "weight"), [(1.0, 0.0), (0.01, 1.0)])
def test_fixmatch_threshold_masks_pseudo_labels(toy, tmp_path, threshold, weight):
    """No softmax reaches 1.0, so nothing passes; every max probability of 4 classes passes 0.01."""
    from encoder.train import train

    run = tmp_path / "fm"
    train(load_config(None, tiny_overrides(toy, run, "ssl.mode=fixmatch", f"ssl.threshold={threshold}", "max_steps=2")))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["xi"] > 0) for r in rows] == [(1, False), (2, True)]  # ξ(step 0) = sin(0) = 0
    assert rows[1]["mean_weight"] == weight and (rows[1]["unlabeled"] == 0.0) == (weight == 0.0)


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

    from encoder.run import build_model
    from encoder.train import build_optimizer, load_checkpoint, save_checkpoint

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
    from encoder.run import build_model
    from encoder.train import build_optimizer, load_checkpoint, save_checkpoint

    cfg = load_config(None, ["model.img_size=32", "model.depth=1"])
    model = build_model(cfg, 3)
    path = save_checkpoint(tmp_path, 2, model, build_model(cfg, 3), build_optimizer(cfg, model), {}, keep=1)
    (path / "teacher.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(DataError, match="teacher.safetensors|unreadable"):
        load_checkpoint(path, model, build_model(cfg, 3), build_optimizer(cfg, model))


# ----------------------------------------------------------------------------- the recipe as the reference trains it


def _state(run: Path, which: str) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["checkpoint"]
                     / f"{which}.safetensors")


def test_teacher_is_the_students_copy_when_supervised_epochs_end(toy, tmp_path):
    """Fix 1: the teacher is not an EMA of the random initialisation through the supervised-only epochs."""
    import torch

    from encoder.train import train

    run = tmp_path / "seed"
    train(load_config(None, tiny_overrides(toy, run, "ssl.supervised_epochs=1", "max_steps=3")))  # 3 steps per epoch
    student, teacher = _state(run, "student"), _state(run, "teacher")
    assert all(torch.equal(student[k], teacher[k]) for k in student)
    meta = json.loads((max((run / "checkpoints").glob("step_*")) / "state.json").read_text())
    assert meta["consumed"]["unlabeled"] == 0  # fix 6: no unlabeled clip was read while ξ = 0


def test_no_teacher_passes_while_xi_is_zero(toy, tmp_path, monkeypatch):
    """Fix 6: the supervised-only epochs run no teacher pass and no unlabeled forward."""
    import encoder.train as recipe

    calls = []
    original = recipe.teacher_passes
    monkeypatch.setattr(recipe, "teacher_passes", lambda *a, **k: calls.append(1) or original(*a, **k))
    run = tmp_path / "zero"
    recipe.train(load_config(None, tiny_overrides(toy, run, "ssl.supervised_epochs=1", "max_steps=5")))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["xi"] for r in rows[:4]] == [0.0] * 4 and rows[4]["xi"] > 0  # the sine ramp starts at 0
    assert len(calls) == 2  # step 5 only: two micro-batches


def test_batchnorm_statistics_come_from_labeled_clips_only():
    """Fix 6: a SeFAR micro-batch leaves the conv stem's running statistics where the labeled clips alone put them."""
    import torch

    from encoder.config import SSLConfig
    from encoder.timesformer import create_model
    from encoder.train import compute_losses

    torch.manual_seed(0)
    student = create_model("tiny", 4, img_size=32, depth=1)
    baseline = create_model("tiny", 4, img_size=32, depth=1)
    baseline.load_state_dict(student.state_dict())
    teacher = create_model("tiny", 4, img_size=32, depth=1).eval()
    labeled = {"video": torch.randn(2, 3, 8, 32, 32), "label": torch.tensor([0, 1])}
    unlabeled = {"weak": torch.randn(4, 3, 8, 32, 32), "strong": 5 + 3 * torch.randn(4, 3, 8, 32, 32),
                 "label": torch.tensor([0, 1, 2, 3])}
    student.train(), baseline.train()
    compute_losses(student, teacher, labeled, unlabeled, 1.0, SSLConfig(passes=2), 8)
    compute_losses(baseline, teacher, labeled, None, 0.0, SSLConfig(passes=2), 8)
    for (name, a), b in zip(student.named_buffers(), baseline.buffers()):
        assert torch.equal(a, b), name


def test_both_modes_take_the_same_steps_per_epoch(toy, tmp_path):
    """Fix 4: an epoch is one pass over the labeled clips, for supervised-only and SeFAR alike."""
    from encoder.train import train

    steps = {}
    for mode in ("supervised", "sefar"):
        run = tmp_path / mode
        extra = (f"ssl.mode={mode}", "optim.steps_per_epoch=null", "optim.epochs=1", "ssl.unlabeled_ratio=1")
        steps[mode] = train(load_config(None, tiny_overrides(toy, run, *extra)))["step"]
    assert steps == {"supervised": 2, "sefar": 2}  # 8 labeled clips / global batch 4 (16 unlabeled would give 4)


def test_results_report_student_and_teacher(toy, tmp_path):
    from encoder.train import train

    run = tmp_path / "both"
    result = train(load_config(None, tiny_overrides(toy, run, "max_steps=2")))
    assert set(result["student"]) == set(result["teacher"]) == {"top1", "top5", "mean_class_accuracy"}
    assert result["headline"] == "teacher" and result["top1"] == result["teacher"]["top1"] and result["step"] == 2
    assert json.loads((run / "final" / "results.json").read_text()) == result
    for which in ("student", "teacher"):
        assert (run / "final" / f"val_predictions_{which}.safetensors").is_file()


def test_resume_with_a_changed_config_stops_with_the_differing_keys(toy, tmp_path):
    from encoder.train import train

    run = tmp_path / "changed"
    train(load_config(None, tiny_overrides(toy, run, "max_steps=2")))
    saved = (run / "config.yaml").read_text()
    changed = tiny_overrides(toy, run, "optim.lr=0.01", "ssl.gamma1=1.0")
    with pytest.raises(ConfigError) as err:
        train(load_config(None, changed))
    assert "optim.lr: 0.005 -> 0.01" in str(err.value) and "ssl.gamma1: 2.0 -> 1.0" in str(err.value)
    assert "max_steps" not in str(err.value)  # bookkeeping keys may change
    assert (run / "config.yaml").read_text() == saved  # nothing overwritten
    assert train(load_config(None, changed), allow_config_change=True)["step"] == 6
    assert "lr: 0.01" in (run / "config.yaml").read_text()


# ------------------------------------------------------------------------------------- pinned first losses

# (step, total, supervised, unlabeled, mix) of the first three steps of a seeded tiny run on the toy dataset.
# A change of these numbers means a change of the maths (or of the data pipeline): update them only on purpose.
# Pinned on an AVX512 CPU; an AVX2 CPU's kernels (decoding, resizing, matmuls) move them by up to 6e-4 relative, so
# the tolerance is 2e-3: a change of the maths (a loss weight, a temperature, a mask) moves them by far more.
PINNED = {
    "supervised": [(1, 1.329322, 1.329322, 0.0, 0.0), (2, 2.12131, 2.12131, 0.0, 0.0), (3, 1.83008, 1.83008, 0.0, 0.0)],
    # pinned on the AVX2 CPU: the tube mixed after the (trainable, BatchNorm) conv stem
    "sefar": [(1, 2.292603, 1.665887, 0.253, 0.060359), (2, 2.327705, 1.682486, 0.197808, 0.124802),
              (3, 3.716428, 2.415634, 0.363886, 0.286511)],
    # the tube mixed in the frames: the stem's BatchNorm normalises strong and mixed clips together
    "sefar ssl.mix_space=pixels": [(1, 2.296207, 1.666097, 0.253923, 0.061132),
                                   (2, 2.335969, 1.682643, 0.201824, 0.124839),
                                   (3, 3.686662, 2.393772, 0.358754, 0.287691)],
}


@pytest.mark.parametrize("run_name", sorted(PINNED))
def test_first_losses_are_pinned(toy, tmp_path, run_name):
    from encoder.train import train

    mode, *extra = run_name.split()
    run = tmp_path / "run"
    train(load_config(None, tiny_overrides(toy, run, f"ssl.mode={mode}", "ssl.ramp_epochs=0", "max_steps=3", *extra)))
    got = losses(run)
    assert [row[0] for row in got] == [1, 2, 3]
    for row, pinned in zip(got, PINNED[run_name], strict=True):
        assert row == pytest.approx(pinned, rel=2e-3, abs=1e-5)


def test_sefar_equals_supervised_only_during_the_supervised_epochs(toy, tmp_path):
    """While ξ = 0 SeFAR runs no teacher and no unlabeled forward: it logs the supervised-only run's losses.

    (The pinned SeFAR losses above differ from the supervised ones from step 1 because that run has no supervised
    epochs: its unlabeled terms and their augmentations start at once.)"""
    from encoder.train import train

    got = {}
    for mode in ("supervised", "sefar"):
        run = tmp_path / mode
        train(load_config(None, tiny_overrides(toy, run, f"ssl.mode={mode}", "ssl.supervised_epochs=1", "max_steps=3")))
        got[mode] = losses(run)
    assert [row[:3] for row in got["sefar"]] == [row[:3] for row in got["supervised"]]
    assert all(row[3] == 0.0 and row[4] == 0.0 for row in got["sefar"])


def test_learning_rate_schedules():
    from encoder.train import learning_rate

    def lr(step, *overrides):
        cfg = load_config(None, ["optim.lr=0.1", "optim.epochs=10", "optim.milestones=[5,8]", *overrides])
        return learning_rate(cfg, step, steps_per_epoch=10)

    # step decay (the paper's): x0.1 at epochs 5 and 8
    assert [lr(s) for s in (0, 49, 50, 79, 80, 99)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    # linear warm-up first
    assert lr(0, "optim.warmup_steps=10") == pytest.approx(0.01) and lr(10, "optim.warmup_steps=10") == 0.1
    # cosine: full lr at the end of the warm-up, half way through the rest 0.05, 0 at the last step
    cos = ["optim.schedule=cosine", "optim.warmup_steps=20"]
    assert lr(19, *cos) == pytest.approx(0.1) and lr(20, *cos) == pytest.approx(0.1)
    assert lr(60, *cos) == pytest.approx(0.05) and lr(100, *cos) == pytest.approx(0.0, abs=1e-12)
    assert lr(40, *cos) > lr(60, *cos) > lr(80, *cos)
    with pytest.raises(ConfigError, match="optim.schedule='linear': use step or cosine"):
        load_config(None, ["optim.schedule=linear"])


def test_a_warm_up_as_long_as_the_run_is_refused():
    """With warmup_steps >= the run's steps the lr never reaches optim.lr: refused before any work, from the config
    when steps_per_epoch is set, else when the schedule is built from the labeled set's size."""
    from encoder.train import Schedule

    with pytest.raises(ConfigError, match=r"optim.warmup_steps=20: the warm-up must be shorter than the run's 20 "):
        load_config(None, ["optim.epochs=2", "optim.steps_per_epoch=10", "optim.warmup_steps=20"])
    load_config(None, ["optim.epochs=2", "optim.steps_per_epoch=10", "optim.warmup_steps=19"])
    cfg = load_config(None, ["optim.epochs=2", "optim.warmup_steps=20", "optim.batch_size=4",
                             "optim.micro_batch_size=4"])
    assert Schedule.build(cfg, labeled_batches_per_epoch=11, world=1).total_steps == 22
    with pytest.raises(ConfigError, match=r"warm-up must be shorter than the run's 20 optimizer steps \(2 epochs of 10\)"):
        Schedule.build(cfg, labeled_batches_per_epoch=10, world=1)


def test_a_run_refused_by_its_schedule_writes_nothing(toy, tmp_path):
    from encoder.train import train

    run = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(toy, run, "optim.steps_per_epoch=null", "optim.warmup_steps=1000"))
    with pytest.raises(ConfigError, match="optim.warmup_steps=1000: the warm-up must be shorter"):
        train(cfg)
    assert not run.exists() or not any(run.iterdir())


def test_a_run_saved_before_a_config_key_existed_still_resumes(tmp_path):
    """A key added since the run started (here optim.schedule) takes its default, as the run did: no refusal."""
    import yaml

    from encoder.train import check_resumable

    cfg = load_config(None, ["optim.lr=0.1"])
    saved = cfg.to_dict()
    del saved["optim"]["schedule"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    check_resumable(tmp_path, cfg, allow_change=False)
    with pytest.raises(ConfigError, match="optim.lr"):
        check_resumable(tmp_path, load_config(None, ["optim.lr=0.2"]), allow_change=False)
    with pytest.raises(ConfigError, match="optim.schedule"):
        check_resumable(tmp_path, load_config(None, ["optim.lr=0.1", "optim.schedule=cosine"]), allow_change=False)


def test_label_smoothing_applies_to_the_supervised_loss_only():
    import torch
    import torch.nn.functional as F

    from encoder.config import SSLConfig
    from encoder.timesformer import create_model
    from encoder.train import compute_losses

    torch.manual_seed(0)
    student = create_model("tiny", 4, img_size=32, depth=1).eval()  # no dropout: the same logits every call
    teacher = create_model("tiny", 4, img_size=32, depth=1).eval()
    labeled = {"video": torch.randn(2, 3, 8, 32, 32), "label": torch.tensor([0, 3])}
    with torch.no_grad():
        logits = student(labeled["video"]).float()
        plain = compute_losses(student, teacher, labeled, None, 0.0, SSLConfig(passes=2), 8)
        smooth = compute_losses(student, teacher, labeled, None, 0.0, SSLConfig(passes=2, label_smoothing=0.2), 8)
    assert torch.allclose(plain.supervised, F.cross_entropy(logits, labeled["label"]))
    assert torch.allclose(smooth.supervised, F.cross_entropy(logits, labeled["label"], label_smoothing=0.2))
    assert not torch.allclose(smooth.supervised, plain.supervised)
    # the unlabeled loss keeps hard pseudo-labels, smoothing or not
    unlabeled = {"weak": torch.randn(4, 3, 8, 32, 32), "strong": torch.randn(4, 3, 8, 32, 32),
                 "label": torch.tensor([0, 1, 2, 3])}
    with torch.no_grad():
        torch.manual_seed(1)
        a = compute_losses(student, teacher, labeled, unlabeled, 1.0, SSLConfig(passes=2, mix=False), 8)
        torch.manual_seed(1)
        b = compute_losses(student, teacher, labeled, unlabeled, 1.0,
                           SSLConfig(passes=2, mix=False, label_smoothing=0.2), 8)
    assert a.unlabeled > 0 and torch.allclose(a.unlabeled, b.unlabeled)
    for bad in ("1.0", "-0.1"):
        with pytest.raises(ConfigError, match="ssl.label_smoothing"):
            load_config(None, [f"ssl.label_smoothing={bad}"])


@pytest.mark.parametrize("shape", ["tokens", "box"])
def test_mix_in_tokens_equals_mix_in_pixels_for_a_patchify_stem(shape):
    """``ssl.mix_space=tokens`` mixes the stem's output (one stem pass for strong and mixed clips); with a patchify
    stem that is the same loss as mixing the frames, and the same gradient."""
    import torch

    from encoder.config import SSLConfig
    from encoder.timesformer import create_model
    from encoder.train import compute_losses

    torch.manual_seed(0)
    student = create_model("tiny", 4, img_size=32, depth=1, stem="patch", head_dropout=0.0)
    teacher = create_model("tiny", 4, img_size=32, depth=1, stem="patch").eval()
    labeled = {"video": torch.randn(2, 3, 8, 32, 32), "label": torch.tensor([0, 3])}
    unlabeled = {"weak": torch.randn(4, 3, 8, 32, 32), "strong": torch.randn(4, 3, 8, 32, 32),
                 "label": torch.tensor([0, 1, 2, 3])}
    out = {}
    for space in ("tokens", "pixels"):
        torch.manual_seed(1)
        student.zero_grad()
        losses = compute_losses(student, teacher, labeled, unlabeled, 1.0,
                                SSLConfig(passes=2, mix_space=space, mix_shape=shape), 8)
        losses.total.backward()
        out[space] = (losses, student.patch_embed.proj.weight.grad.clone())
    (a, grad_a), (b, grad_b) = out["tokens"], out["pixels"]
    assert a.mix > 0
    for name in ("total", "unlabeled", "mix"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-3, atol=1e-6)


def test_mix_space_is_validated():
    with pytest.raises(ConfigError, match="ssl.mix_space"):
        load_config(None, ["ssl.mix_space=frames"])


# ------------------------------------------------------------------------------------------------------ fork


FORK_COMMON = ("ssl.supervised_epochs=1", "ssl.ramp_epochs=1")  # 3 supervised-only steps of 6


@pytest.fixture(scope="module")
def fork_source(toy, tmp_path_factory):
    """A supervised-only run that keeps its checkpoint at the end of the supervised epochs (step 3)."""
    from encoder.train import train

    source = tmp_path_factory.mktemp("fork") / "supervised"
    train(load_config(None, tiny_overrides(toy, source, "ssl.mode=supervised", "save_steps=[3]", *FORK_COMMON)))
    return source


def test_sefar_forked_from_a_supervised_run_equals_an_unbroken_sefar_run(toy, tmp_path, fork_source):
    """SeFAR's supervised epochs are a supervised-only run's first steps (ξ = 0, teacher = student): forking SeFAR
    from that run's checkpoint at their end (``save_steps``) gives the unbroken run's losses and weights exactly,
    its log from step 1 and its training time counted from step 0."""
    import torch
    from safetensors.torch import load_file

    from encoder.train import train

    common, source = FORK_COMMON, fork_source
    unbroken = tmp_path / "unbroken"
    train(load_config(None, tiny_overrides(toy, unbroken, "ssl.mode=sefar", *common)))
    fork_point = source / "checkpoints" / "step_0000003"
    assert fork_point.is_dir()  # kept beyond keep_checkpoints
    assert sorted(p.name for p in (source / "checkpoints").glob("step_*")) == [
        "step_0000003", "step_0000004", "step_0000006"]
    forked = tmp_path / "forked"
    result = train(load_config(None, tiny_overrides(toy, forked, "ssl.mode=sefar", *common)), fork_from=fork_point)

    assert losses(forked) == losses(unbroken)  # every step, the 3 copied ones and the 3 trained after the fork
    assert losses(forked)[4][3] > 0  # the unlabeled loss is on after the fork (ξ rises from 0 at step 4)
    for which in ("student", "teacher"):
        a, b = (load_file(run / "final" / f"{which}.safetensors") for run in (forked, unbroken))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    source_seconds = json.loads((fork_point / "state.json").read_text())["train_seconds"]
    assert result["forked_from"] == {"checkpoint": str(fork_point), "step": 3}
    assert result["train_seconds"] >= source_seconds > 0
    # resuming the forked run later keeps the record; a fork with another config stops before writing anything
    assert train(load_config(None, tiny_overrides(toy, forked, "ssl.mode=sefar", *common)),
                 fork_from=fork_point)["forked_from"]["step"] == 3
    with pytest.raises(ConfigError, match="optim.lr"):
        train(load_config(None, tiny_overrides(toy, tmp_path / "other", "ssl.mode=sefar", "optim.lr=0.5", *common)),
              fork_from=fork_point)
    assert not (tmp_path / "other").exists()
    late = source / "checkpoints" / "step_0000004"  # after the supervised-only steps: the runs differ there
    with pytest.raises(ConfigError, match="after the 3 supervised-only steps"):
        train(load_config(None, tiny_overrides(toy, tmp_path / "late", "ssl.mode=sefar", *common)), fork_from=late)
    assert not (tmp_path / "late").exists()


@pytest.mark.parametrize("variant", [
    ("ssl.mode=fixmatch", "ssl.threshold=0.01", "ssl.mix=false"),
    ("ssl.mode=sefar", "aug.temporal=warping", "ssl.adaptive=false", "ssl.mix_space=pixels", "ssl.unlabeled_ratio=2"),
], ids=["fixmatch", "sefar-variant"])
def test_runs_that_differ_in_unlabeled_keys_only_fork_exactly(toy, tmp_path, variant, fork_source):
    """The keys of FORK_FREE act on unlabeled clips and the teacher only: such a run forked from a supervised-only
    run at the end of the supervised epochs is the unbroken run."""
    from encoder.train import FORK_FREE, train

    assert all(v.split("=")[0] in FORK_FREE for v in variant)
    unbroken = tmp_path / "unbroken"
    train(load_config(None, tiny_overrides(toy, unbroken, *variant, *FORK_COMMON)))
    forked = tmp_path / "forked"
    train(load_config(None, tiny_overrides(toy, forked, *variant, *FORK_COMMON)),
          fork_from=fork_source / "checkpoints" / "step_0000003")
    assert losses(forked) == losses(unbroken) and losses(forked)[4][3] > 0


def test_fork_from_something_that_is_not_a_checkpoint(toy, tmp_path):
    from encoder.train import train

    cfg = load_config(None, tiny_overrides(toy, tmp_path / "run", "ssl.mode=sefar"))
    with pytest.raises(DataError, match="not a checkpoint folder"):
        train(cfg, fork_from=tmp_path)
    (tmp_path / "ckpt" / "checkpoints" / "step_0000003").mkdir(parents=True)
    (tmp_path / "ckpt" / "checkpoints" / "step_0000003" / "state.json").write_text("{}")
    with pytest.raises(DataError, match="config.yaml"):
        train(cfg, fork_from=tmp_path / "ckpt" / "checkpoints" / "step_0000003")
