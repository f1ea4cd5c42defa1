"""Frozen export: config.json contents, identical outputs after loading, preprocessing, clear load errors.

Also holds the fake training run used by test_evaluate.py and test_features.py (written by hand, so these tests
do not depend on the training loop).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from videos import write_video

from encoder.config import load_config
from encoder.data.dataset import ClipDataset
from common.errors import DataError
from encoder.data.sampling import segment_frame_indices
from encoder.data.video import read_frames
from encoder.export import EvalTransform, FrozenEncoder, PreprocessConfig, eval_views, export, load
from encoder.timesformer import create_model
from sefar.cli import main

NUM_CLASSES = 5
CLASS_NAMES = ["vault a", "vault b", "leap", "turn", "beam jump"]
CATEGORIES = """\
Clabel: 0; set: 1; Glabel: 0; (VT) vault a
Clabel: 1; set: 1; Glabel: 1; (VT) vault b
Clabel: 2; set: 21; Glabel: 2; (FX) leap
Clabel: 3; set: 22; Glabel: 3; (FX) turn
Clabel: 4; set: 31; Glabel: 4; (BB) beam jump
"""
LABELS = [0, 1, 2, 3, 4, 0]


def make_dataset(root: Path, n_clips: int = len(LABELS)) -> Path:
    """``root/videos/clip{i}.mp4`` (12 frames, 40x56) + ``val.txt`` of bare ids + ``categories.txt``."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_clips):
        write_video(root / "videos" / f"clip{i}.mp4", n=12, size=(40, 56), fps=10)
        lines.append(f"clip{i} {LABELS[i % len(LABELS)]}\n")
    (root / "val.txt").write_text("".join(lines))
    (root / "categories.txt").write_text(CATEGORIES)
    return root


def make_run(tmp: Path, head_dropout: float = 0.5) -> Path:
    """A finished-run folder: config.yaml, classes.json, final/{teacher,student}.safetensors."""
    data = make_dataset(tmp / "data")
    cfg = load_config(None, [
        f"data.root={data}", "data.val_list=val.txt", "data.categories=categories.txt", "model.img_size=32",
        f"model.head_dropout={head_dropout}", "data.num_workers=0",
    ])
    run = tmp / "run"
    (run / "final").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg.to_dict()), run / "config.yaml")
    classes = {"class_names": CLASS_NAMES, "categories": str(data / "categories.txt")}
    (run / "classes.json").write_text(json.dumps(classes))
    for seed, which in enumerate(("teacher", "student")):
        torch.manual_seed(seed)
        model = create_model("tiny", NUM_CLASSES, combo=cfg.model.combo, img_size=32,
                             drop_path_rate=cfg.model.drop_path_rate, head_dropout=head_dropout)
        save_file(model.state_dict(), run / "final" / f"{which}.safetensors")
    return run


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("fake"))


@pytest.fixture(scope="session")
def exported(fake_run, tmp_path_factory) -> Path:
    return export(fake_run, tmp_path_factory.mktemp("export") / "teacher")


def _clip(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, 8, size, size, generator=torch.Generator().manual_seed(1))  # (B, C, K, H, W)


def test_export_config_records_preprocessing_and_classes(exported):
    config = json.loads((exported / "config.json").read_text())
    assert config["format"] == "sefar-encoder" and config["format_version"] == 1
    assert (config["combo"], config["num_frames"], config["img_size"]) == ("2-2-4", 8, 32)
    assert config["architecture"]["num_classes"] == NUM_CLASSES and config["architecture"]["embed_dim"] == 96
    assert config["preprocess"]["mean"] == [0.5, 0.5, 0.5] and config["preprocess"]["std"] == [0.5, 0.5, 0.5]
    assert config["class_names"] == CLASS_NAMES
    assert [(c["event"], c["set_id"]) for c in config["categories"]] == [
        ("VT", 1), ("VT", 1), ("FX", 21), ("FX", 22), ("BB", 31)
    ]
    assert config["source"] == {"run": "run", "which": "teacher"}
    assert config["which"] == "teacher" and load(exported).which == "teacher"
    assert not list(exported.glob("*.tmp"))


def test_loaded_export_gives_identical_logits_and_features(fake_run, exported):
    teacher = load_file(fake_run / "final" / "teacher.safetensors")
    source = create_model("tiny", NUM_CLASSES, img_size=32).eval()
    source.load_state_dict(teacher)
    encoder = load(exported)
    x = _clip()
    with torch.no_grad():
        assert torch.equal(encoder(x), source(x))
        got, want = encoder.features(x), source.forward_tokens(x)
    assert torch.equal(got["fused"], want["fused"]) and got["fused"].shape == (2, 256)
    assert [tuple(t.shape) for t in got["element_tokens"]] == [(2, 2, 16, 96), (2, 2, 16, 96), (2, 4, 16, 96)]
    assert got["element_cls"].shape == (2, 3, 96)


def test_frozen_encoder_stays_in_eval_mode_without_grad(exported):
    encoder = load(exported)
    parent = torch.nn.Sequential(encoder)
    parent.train()
    assert not encoder.training and not encoder.model.head.dropout.training
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder.class_names == CLASS_NAMES and encoder.categories[2].event == "FX"
    x = _clip(1)
    assert torch.equal(encoder(x), encoder(x))  # dropout off


def test_student_export_differs_from_teacher(fake_run, exported, tmp_path):
    student = load(export(fake_run, tmp_path / "student", which="student"))
    assert student.which == "student"
    assert not torch.equal(student(_clip(1)), load(exported)(_clip(1)))


def test_preprocess_matches_evaluation_pipeline(fake_run, exported):
    encoder = load(exported)
    path = fake_run.parent / "data" / "videos" / "clip0.mp4"
    frames = read_frames(path)  # (T, H, W, C) all 12 frames
    x = encoder.preprocess(frames)
    assert x.shape == (1, 3, 8, 32, 32) and x.dtype == torch.float32
    pp = encoder.preprocess_config
    dataset = ClipDataset([_sample(path)], pp.num_frames, EvalTransform(pp), train=False)
    torch.testing.assert_close(x[0], dataset[0]["clip"][0])
    batch = encoder.preprocess([frames, frames[:5]])  # a 5-frame clip repeats frames
    assert batch.shape == (2, 3, 8, 32, 32)
    with pytest.raises(ValueError, match="uint8 RGB"):
        encoder.preprocess(frames.astype(np.float32))


def test_read_time_resize_is_replayed_on_raw_frames(fake_run):
    path = fake_run.parent / "data" / "videos" / "clip0.mp4"  # 40x56
    pp = PreprocessConfig(num_frames=8, img_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, short_side=36)
    dataset = ClipDataset([_sample(path)], 8, EvalTransform(pp, crops=2), train=False, short_side=36)
    raw = torch.from_numpy(read_frames(path, segment_frame_indices(12, 8, train=False))).permute(0, 3, 1, 2)
    views = eval_views(raw, pp, crops=2)  # (S, C, K, H, W)
    assert views.shape == (2, 3, 8, 32, 32)
    torch.testing.assert_close(views, dataset[0]["clip"])
    assert not torch.allclose(views, eval_views(raw, replace(pp, short_side=None), crops=2))


def _sample(path: Path):
    from encoder.data.splits import Sample

    return Sample(str(path), 0)


def _copy_export(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("config.json", "model.safetensors"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_missing_and_corrupt_weights_name_the_file(exported, tmp_path):
    broken = _copy_export(exported, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(DataError, match=r"model\.safetensors: not a readable safetensors file"):
        load(broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(DataError, match=r"model\.safetensors: missing"):
        load(broken)
    with pytest.raises(DataError, match="no such export folder"):
        load(tmp_path / "nowhere")
    (broken / "config.json").write_text("{not json")
    with pytest.raises(DataError, match=r"config\.json:1: invalid JSON"):
        load(broken)


def test_key_and_shape_mismatch_name_the_file(exported, tmp_path):
    bad = _copy_export(exported, tmp_path / "keys")
    state = load_file(bad / "model.safetensors")
    state.pop("head.fc.bias")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, bad / "model.safetensors")
    with pytest.raises(DataError, match=r"model\.safetensors: .*missing keys \['head\.fc\.bias'\].*unexpected keys"):
        load(bad)
    shape = _copy_export(exported, tmp_path / "shape")
    config = json.loads((shape / "config.json").read_text())
    config["architecture"]["num_classes"] = 7
    config["class_names"] = [str(i) for i in range(7)]
    (shape / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match=r"shape mismatch .*head\.fc\.weight: file \(5, 256\) vs config \(7, 256\)"):
        load(shape)


@pytest.mark.slow
def test_loading_needs_no_training_code(exported):
    code = (
        "import sys; sys.modules['encoder.train'] = None; sys.modules['encoder.config'] = None\n"
        "import torch; from encoder.export import load\n"
        f"m = load({str(exported)!r}); print(tuple(m(torch.zeros(1, 3, 8, 32, 32)).shape))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(1, 5)"


def test_cli_export_and_error_line(fake_run, tmp_path, capsys):
    assert main(["encoder", "export", str(fake_run), str(tmp_path / "exp"), "--which", "student"]) == 0
    assert isinstance(load(tmp_path / "exp"), FrozenEncoder)
    (tmp_path / "exp" / "model.safetensors").write_bytes(b"garbage")
    capsys.readouterr()
    rc = main(["encoder", "eval", str(tmp_path / "exp"), "--list", str(fake_run.parent / "data" / "val.txt")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "model.safetensors: not a readable safetensors" in err
    assert len(err.splitlines()) == 1


def test_cli_train_forwards_config_overrides_and_resume(monkeypatch):
    import encoder.train

    calls = []
    monkeypatch.setattr(encoder.train, "main_train", lambda *args, **kw: calls.append((args, kw)) or 0)
    assert main(["encoder", "train", "cfg.yaml", "optim.lr=0.01", "ssl.mode=supervised", "--no-resume"]) == 0
    assert main(["encoder", "train", "-"]) == 0
    assert main(["encoder", "train", "-", "--allow-config-change"]) == 0
    assert main(["encoder", "train", "-", "--fork-from", "sup/checkpoints/step_0000240"]) == 0
    off = {"fork_from": None}
    assert calls == [
        (("cfg.yaml", ["optim.lr=0.01", "ssl.mode=supervised"]), {"resume": False, "allow_config_change": False, **off}),
        (("-", []), {"resume": True, "allow_config_change": False, **off}),
        (("-", []), {"resume": True, "allow_config_change": True, **off}),
        (("-", []), {"resume": True, "allow_config_change": False, "fork_from": "sup/checkpoints/step_0000240"}),
    ]


@pytest.mark.parametrize("keys, value, reason", [
    (("architecture", "depth"), 10**6, "architecture.depth=1000000: must be in (0, 1024]"),
    (("architecture", "embed_dim"), 1e30, "architecture.embed_dim=1e+30: must be an integer"),
    (("architecture", "patch_size"), 0, "architecture.patch_size=0: must be in (0, 1024]"),
    (("architecture", "mlp_ratio"), float("inf"), "config.json:1: invalid JSON: Infinity is not a JSON number"),
    (("architecture", "mlp_ratio"), 1e300, "architecture.mlp_ratio=1e+300: must be in"),
    (("preprocess", "mean"), [0.5], "preprocess.mean=[0.5]: must be a list of 3 items"),
    (("format_version",), "x", "format_version 'x' is not an integer"),
    (("class_names",), 3, "class_names must be a list of strings"),
    (("categories",), [{"label": 0}], "categories[0] must have exactly the keys"),
])
def test_damaged_export_config_is_one_error_before_any_allocation(exported, tmp_path, keys, value, reason):
    import re
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(exported, damaged)
    config = json.loads((damaged / "config.json").read_text())
    node = config
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    (damaged / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match=re.escape(reason)):
        load(damaged)
