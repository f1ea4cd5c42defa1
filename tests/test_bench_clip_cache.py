"""bench/clip_cache.py: SeFAR's unlabeled stream read with both caches, on a tiny SynGym."""

import json

import pytest

from bench import clip_cache
from encoder.data.syngym import synthesize


@pytest.fixture(scope="module")
def syngym(tmp_path_factory):
    data = tmp_path_factory.mktemp("syngym")
    synthesize(data, seed=0, size="tiny", workers=1)
    return data


def test_both_caches_give_the_same_batches_and_only_whole_clips_read_again(syngym, tmp_path):
    out = tmp_path / "clip_cache.json"
    # a limit that holds every clip's 8 sampled frames but not every whole clip
    summary = clip_cache.main(["--data", str(syngym), "--epochs", "3", "--rounds", "1", "--out", str(out),
                               "data.label_ratio=0.5", "data.cache_mb=4", "optim.micro_batch_size=4",
                               "optim.batch_size=4"])
    sampled, whole = summary["rows"]
    assert (sampled["cache"], whole["cache"]) == clip_cache.CACHES
    clips = summary["clips"]
    assert sampled["disk_reads"] == clips  # each clip once
    assert whole["disk_reads"] > clips + 4  # the clips beyond the limit, at every read
    assert sampled["cache_mib"] == pytest.approx(clips * 8 * 3 * 64 * 64 / 2**20, abs=0.05)
    assert whole["cache_mib"] <= 4.0
    for row in summary["rows"]:
        assert row["first_epoch_batch_s"] > 0 and len(row["later_rounds_batch_s"]) == 1
    record = json.loads(out.read_text())
    assert "reads from disk" in record["tables"][0]["columns"] and "data.cache_mb=4" in record["tables"][0]["notes"]


def test_random_frames_are_refused(syngym, tmp_path, capsys):
    with pytest.raises(SystemExit, match="frame_jitter"):
        clip_cache.main(["--data", str(syngym), "--out", str(tmp_path / "x.json"), "data.frame_jitter=1.0"])
    with pytest.raises(SystemExit, match="error: .*"):
        clip_cache.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
