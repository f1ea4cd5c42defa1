"""An export's config.json is tied to its weights (SHA-256), and broken weights (NaN logits) are one clear error
from ``encoder eval``, never an impossible accuracy (top-1 above top-5)."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_export import LABELS, _copy_export, export, exported, fake_run  # noqa: F401 (fixtures)

from common.errors import DataError
from encoder.evaluate import NonFiniteScores, compute_metrics
from encoder.export import file_sha256, load
from sefar.cli import main


def _eval_argv(folder, fake_run, out) -> list[str]:
    data = fake_run.parent / "data"
    return ["encoder", "eval", str(folder), "--list", str(data / "val.txt"), "--videos-root", str(data / "videos"),
            "--passes", "0", "--workers", "0", "--out", str(out)]


def _one_error_line(err: str) -> str:
    """The one ``error:`` line of stderr (the progress bar's carriage-return updates aside)."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("evaluate:")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------ digest


def test_export_records_the_weights_digest(exported):
    config = json.loads((exported / "config.json").read_text())
    weights = config["weights"]
    assert weights["file"] == "model.safetensors"
    assert weights["sha256"] == file_sha256(exported / "model.safetensors")
    assert weights["bytes"] == (exported / "model.safetensors").stat().st_size
    assert not list(exported.glob(".*.tmp"))


def test_weights_copied_from_another_export_are_one_error(fake_run, exported, tmp_path, capsys):
    student = export(fake_run, tmp_path / "student", which="student")  # same architecture, other weights
    mixed = _copy_export(exported, tmp_path / "mixed")
    (mixed / "model.safetensors").write_bytes((student / "model.safetensors").read_bytes())
    with pytest.raises(DataError, match=r"mixed/model\.safetensors: does not match config\.json: its SHA-256 is "):
        load(mixed)
    assert main(_eval_argv(mixed, fake_run, tmp_path / "out")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {mixed / 'model.safetensors'}: does not match config.json")
    assert not (tmp_path / "out").exists()


def test_exports_from_before_digests_still_load_with_a_notice(exported, tmp_path, caplog):
    old = _copy_export(exported, tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    del config["weights"]
    (old / "config.json").write_text(json.dumps(config, indent=2))
    with caplog.at_level(logging.WARNING, logger="encoder.export"):
        encoder = load(old)
    assert encoder.class_names == config["class_names"]
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and "records no weights digest" in notes[0] and "not verified" in notes[0]


@pytest.mark.parametrize("weights", [{"file": "model.safetensors", "sha256": "abc"}, "x",
                                     {"file": "other.safetensors", "sha256": "0" * 64}])
def test_a_malformed_digest_entry_is_one_error(exported, tmp_path, weights):
    bad = _copy_export(exported, tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    config["weights"] = weights
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match=r"config\.json: weights must be"):
        load(bad)


# ------------------------------------------------------------------------------------------ NaN logits


def test_metrics_refuse_non_finite_scores():
    probs = torch.full((4, 10), 0.1)
    probs[1, 3] = math.nan
    probs[2] = math.inf
    with pytest.raises(NonFiniteScores, match="non-finite logits .* for 2 of 4 clips") as info:
        compute_metrics(probs, torch.tensor([0, 1, 2, 3]), [str(i) for i in range(10)])
    assert info.value.clips == [1, 2]


def test_eval_of_an_export_with_nan_weights_is_one_error(exported, fake_run, tmp_path, capsys):
    broken = _copy_export(exported, tmp_path / "nan")
    state = {k: torch.full_like(v, math.nan) if v.is_floating_point() else v
             for k, v in load_file(broken / "model.safetensors").items()}
    save_file(state, broken / "model.safetensors")
    config = json.loads((broken / "config.json").read_text())
    config["weights"]["sha256"] = file_sha256(broken / "model.safetensors")  # the weights are what it says
    (broken / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert main(_eval_argv(broken, fake_run, out)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {broken / 'model.safetensors'}: the model produced non-finite logits (NaN or "
                           f"infinity) for {len(LABELS)} of {len(LABELS)} clips (first: ")
    assert not out.exists()
