"""bench/decode.py compares readers at equal output and measures clips per CPU-second."""

import importlib.util
import json
from pathlib import Path

import pytest


def _bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "decode.py"
    spec = importlib.util.spec_from_file_location("decode_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decode_bench_runs_at_equal_output(tmp_path):
    pytest.importorskip("cv2")
    out = tmp_path / "decode.json"
    result = _bench().main(["--clips", "2", "--size", "160x90", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    rows = result["rows"]
    assert [r["reader"].split(":")[0] for r in rows] == ["reference", "ours", "ours"]
    assert rows[0]["speedup"] == 1.0 and all(r["clips_per_cpu_s"] > 0 and r["clips_per_s"] > 0 for r in rows)
