"""bench/mix_space.py: both ways of mixing the tube run the real training step and are timed in alternating rounds."""

import json

from bench import mix_space


def test_mix_space_bench_times_both_ways_on_the_embedded_config(tmp_path):
    out = tmp_path / "mix_space.json"
    summary = mix_space.main(["--batch", "2", "--rounds", "2", "--iters", "1", "--out", str(out), "model.img_size=32"])
    assert [row["mix_space"] for row in summary["rows"]] == ["tokens", "pixels"]
    for row in summary["rows"]:
        assert len(row["rounds_s"]) == 2 and row["step_s"] > 0
    assert summary["unlabeled_batch"] == 2  # the config's one unlabeled clip per labeled one
    record = json.loads(out.read_text())
    assert "s per step (median)" in record["tables"][0]["columns"] and "model.img_size=32" in record["tables"][0]["notes"]
