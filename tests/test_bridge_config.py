"""Every shipped bridge config validates; bad values are all reported at once; compare files name valid runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import BridgeConfig, load_config
from common.errors import ConfigError
from pipelines.compare import read_compare

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "bridge").glob("*.yaml"))
RUN_CONFIGS = [p for p in CONFIGS if not p.name.startswith("compare_")]
COMPARE_CONFIGS = [p for p in CONFIGS if p.name.startswith("compare_")]


def test_the_paper_and_embedded_configs_ship():
    names = {p.stem for p in CONFIGS}
    assert {"syngym_smollm2", "gymqa99_vicuna7b", "gymqa288_vicuna7b", "compare_syngym"} <= names


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.stem)
def test_run_config_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, BridgeConfig)
    if "vicuna" in path.stem:
        assert cfg.llm.template == "vicuna_v1.1" and cfg.adapter.num_queries == 32
        assert cfg.train.gradient_checkpointing and cfg.llm.dtype == "bfloat16"
        for switch in ("8bit", "4bit"):
            assert load_config(path, [f"llm.quantization={switch}"]).llm.quantization == switch


@pytest.mark.parametrize("path", COMPARE_CONFIGS, ids=lambda p: p.stem)
def test_compare_config_runs_validate(path):
    base, out, runs = read_compare(path)
    assert len(runs) >= 2
    for name, overrides in runs.items():
        load_config(base, [*overrides, f"out={Path(out) / name}"])


def test_every_problem_is_reported():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["encoder.kind=clip", "train.objective=essay", "llm.quantization=3bit", "train.lr=-1",
                           "eval.methods=[vote]"])
    text = str(err.value)
    for needle in ("encoder.kind='clip'", "train.objective='essay'", "quantization='3bit'", "train.lr=-1",
                   "eval.methods=['vote']"):
        assert needle in text


def test_adapter_instruction_option():
    base = ["encoder.kind=frames"]
    assert not load_config(None, base).adapter.instruction  # off unless asked for
    cfg = load_config(None, [*base, "adapter.instruction=true", "adapter.max_instruction_tokens=32"])
    assert cfg.adapter.instruction is True and cfg.adapter.max_instruction_tokens == 32
    with pytest.raises(ConfigError, match="adapter.max_instruction_tokens=0"):
        load_config(None, [*base, "adapter.max_instruction_tokens=0"])
    with pytest.raises(ConfigError, match="instructions"):
        load_config(None, [*base, "adapter.instructions=true"])  # unknown keys are still rejected
    shipped = Path(__file__).resolve().parents[1] / "configs" / "bridge" / "gymqa99_vicuna7b.yaml"
    assert "# instruction: true" in shipped.read_text() and not load_config(shipped).adapter.instruction


def test_compare_table_and_plot(tmp_path):
    from bridge.evaluate import format_table
    from pipelines.compare import plot_compare

    result = {"methods": {"likelihood_mean": {"accuracy": 0.5, "circular": 0.25, "n": 200, "seconds": 61.0,
                                              "pair_accuracy": 0.6, "direction_pairs": 40}}}
    other = {"methods": {"likelihood_mean": {"accuracy": 0.4, "circular": None, "n": 200, "seconds": 50.0}}}
    table = format_table([("sefar", result), ("frames", other)]).splitlines()
    assert table[2] == "| sefar | likelihood_mean | 200 | 50.0 | 25.0 | 60.0 (40) | 61 |"
    assert table[3] == "| frames | likelihood_mean | 200 | 40.0 | - | - | 50 |"
    png = plot_compare({"sefar": result, "frames": other}, tmp_path / "compare.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_plots_the_reported_method():
    """The plot shows likelihood_mean (what the README reports) even when likelihood_sum comes first; otherwise
    the first method all runs share."""
    from pipelines.compare import plotted_method

    both = {"methods": {"likelihood_sum": {"accuracy": 0.3}, "likelihood_mean": {"accuracy": 0.4}}}
    assert plotted_method({"a": both, "b": both}) == "likelihood_mean"
    gen = {"methods": {"generate": {"accuracy": 0.2}, "letter": {"accuracy": 0.1}}}
    assert plotted_method({"a": gen, "b": {"methods": {"letter": {}, "generate": {}}}}) == "generate"
    with pytest.raises(ValueError, match="no scoring method"):
        plotted_method({"a": gen, "b": both})


def test_compare_file_errors(tmp_path):
    bad = tmp_path / "compare.yaml"
    bad.write_text("base: x.yaml\nruns:\n  a: encoder.kind=frames\nextra: 1\n")
    with pytest.raises(ConfigError) as err:
        read_compare(bad)
    assert "missing key 'out'" in str(err.value) and "runs must map" in str(err.value) and "unknown keys" in str(err.value)
