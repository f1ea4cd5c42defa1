"""bench.decode compares readers at equal output and measures clips per CPU-second."""

import pytest

from bench import decode
from common.results import read_result


def test_decode_bench_runs_at_equal_output(tmp_path):
    pytest.importorskip("cv2")
    out = tmp_path / "decode.json"
    result = decode.main(["--clips", "2", "--size", "160x90", "--repeats", "1", "--out", str(out)])
    assert read_result(out)["data"] == result  # a result file: the numbers plus what made them
    rows = result["rows"]
    assert [r["reader"].split(":")[0] for r in rows] == ["reference", "ours", "ours"]
    assert rows[0]["speedup"] == 1.0 and all(r["clips_per_cpu_s"] > 0 and r["clips_per_s"] > 0 for r in rows)
