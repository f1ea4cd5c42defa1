"""Feature cache: clip ids, shapes and values, resume, unreadable clips, rank split, reading, one shard size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_export import LABELS, exported, fake_run  # noqa: F401 (fixtures)

import bridge.features as features
from common.errors import DataError, ListFormatError
from encoder.data.splits import Sample
from encoder.data.video import read_frames
from encoder.export import load
from gymqa.question import Question, write_questions
from bridge.config import load_config
from bridge.featurecache import FeatureCache, load_features
from bridge.features import clip_id, extract_features, read_clip_list
from bridge.qa import feature_cache, write_clip_sublist
from sefar.cli import main


def _videos(fake_run: Path) -> Path:
    return fake_run.parent / "data" / "videos"


def _list(tmp: Path, fake_run: Path, broken: bool = False) -> Path:
    """Five clips (absolute, relative and bare-id entries); optionally a sixth that cannot be decoded."""
    videos = _videos(fake_run)
    lines = [f"{videos / 'clip0.mp4'} 0", "clip1 1", "clip2.mp4 2", "clip3 3", f"{videos / 'clip4.mp4'} 4"]
    if broken:
        (videos / "broken.mp4").write_bytes(b"not a video")
        lines.insert(2, "broken.mp4 1")
    path = tmp / "clips.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_clip_ids_and_list_resolution(tmp_path):
    assert clip_id(Sample("/root/video/A0x_E_000001_000002_A_0003_0004.mp4", 1)) == "A0x_E_000001_000002_A_0003_0004"
    assert clip_id(Sample("ApplyEyeMakeup/v_Apply_g08_c01.avi", 0)) == "ApplyEyeMakeup/v_Apply_g08_c01"
    assert clip_id(Sample("C:\\data\\x.mp4", 0)) == "x"
    assert clip_id(Sample("long.mp4", 0, 1.5, 3.0)) == "long@1.5-3"
    (tmp_path / "folder").mkdir()
    lst = tmp_path / "l.txt"
    lst.write_text("/abs/a.mp4 0\nsub/b.avi 1\nbare 2\nfolder 3\n")
    ids, samples = read_clip_list(lst)
    assert ids == ["a", "sub/b", "bare", "folder"]
    assert [s.path for s in samples] == ["/abs/a.mp4", str(tmp_path / "sub/b.avi"), str(tmp_path / "bare.mp4"),
                                         str(tmp_path / "folder")]
    _, rooted = read_clip_list(lst, videos_root="/videos")
    assert rooted[0].path == "/videos/a.mp4" and rooted[2].path == "/videos/bare.mp4"
    lst.write_text("x/a.mp4 0\nx/a.avi 1\n")
    with pytest.raises(ListFormatError, match=r"l\.txt: entries 1 and 2 map to the same clip id 'x/a'"):
        read_clip_list(lst)


def test_cache_shapes_values_and_resume(exported, fake_run, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    manifest = extract_features(exported, _list(tmp_path, fake_run), out, _videos(fake_run), batch_size=2,
                                shard_size=2, dtype="float32", num_workers=0)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", *(f"shard_0000{i}.safetensors" for i in range(3))]
    assert manifest["complete"] and manifest["done_shards"] == [0, 1, 2] and manifest["num_shards"] == 3
    assert manifest["clips"] == {"clip0": 0, "clip1": 0, "clip2": 1, "clip3": 1, "clip4": 2}
    assert manifest["shapes"] == {"fused": [256], "element_cls": [3, 96], "element_tokens.0": [2, 16, 96],
                                  "element_tokens.1": [2, 16, 96], "element_tokens.2": [4, 16, 96]}
    assert json.loads((out / "manifest.json").read_text()) == manifest

    got = load_features(out, "clip3")
    assert {k: list(v.shape) for k, v in got.items()} == manifest["shapes"]
    assert all(v.dtype == torch.float32 for v in got.values())
    encoder = load(exported)
    want = encoder.features(encoder.preprocess(read_frames(_videos(fake_run) / "clip3.mp4")))
    torch.testing.assert_close(got["fused"], want["fused"][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["element_tokens.2"], want["element_tokens"][2][0], atol=1e-4, rtol=1e-4)

    # resume: finished shards are kept as they are, a missing one is extracted again
    stamps = {i: (out / f"shard_0000{i}.safetensors").stat().st_mtime_ns for i in (0, 2)}
    (out / "shard_00001.safetensors").unlink()
    calls = []
    real = features._extract_shard
    monkeypatch.setattr(features, "_extract_shard", lambda enc, ids, *a: calls.append(list(ids)) or real(enc, ids, *a))
    manifest = extract_features(exported, _list(tmp_path, fake_run), out, _videos(fake_run), batch_size=2,
                                shard_size=2, dtype="float32", num_workers=0)
    assert calls == [["clip2", "clip3"]] and manifest["complete"]
    assert {i: (out / f"shard_0000{i}.safetensors").stat().st_mtime_ns for i in (0, 2)} == stamps
    torch.testing.assert_close(load_features(out, "clip3")["fused"], got["fused"])

    with pytest.raises(DataError, match=r"manifest\.json: this cache was written with a different shard_size"):
        extract_features(exported, _list(tmp_path, fake_run), out, _videos(fake_run), shard_size=3,
                         dtype="float32", num_workers=0)


def test_unreadable_clips_are_skipped_and_reported(exported, fake_run, tmp_path):
    out = tmp_path / "cache"
    manifest = extract_features(exported, _list(tmp_path, fake_run, broken=True), out, _videos(fake_run),
                                shard_size=4, num_workers=0)
    assert list(manifest["skipped"]) == ["broken"] and manifest["complete"]
    cache = FeatureCache(out)
    assert len(cache) == 5 and "broken" not in cache and "clip4" in cache
    assert cache["clip0"]["fused"].dtype == torch.float16
    with pytest.raises(DataError, match=r"manifest\.json: clip 'broken' was skipped: .*broken\.mp4"):
        cache["broken"]
    with pytest.raises(DataError, match="clip 'nope' is not in the cached list"):
        cache["nope"]


class _FakeState:
    """One process of a two-process accelerate launch, run one after the other."""

    def __init__(self, rank: int, world: int = 2) -> None:
        self.process_index, self.num_processes = rank, world
        self.is_main_process = rank == 0
        self.device = torch.device("cpu")

    def wait_for_everyone(self) -> None:
        pass


def test_shards_are_split_across_ranks(exported, fake_run, tmp_path):
    out = tmp_path / "cache"
    args = (exported, _list(tmp_path, fake_run), out, _videos(fake_run), 2, 1, "float16", 0)
    after_rank0 = features._extract(_FakeState(0), *args)
    assert after_rank0["done_shards"] == [0, 2, 4] and not after_rank0["complete"]
    with pytest.raises(DataError, match=r"shard_00001\.safetensors: not extracted yet"):
        load_features(out, "clip1")
    final = features._extract(_FakeState(1), *args)
    assert final["done_shards"] == [0, 1, 2, 3, 4] and final["complete"]
    assert load_features(out, "clip1")["fused"].shape == (256,)


def test_cli_features(exported, fake_run, tmp_path, capsys):
    rc = main(["bridge", "features", str(exported), str(_list(tmp_path, fake_run)), str(tmp_path / "c"),
               "--videos-root", str(_videos(fake_run)), "--batch-size", "3", "--workers", "0"])
    assert rc == 0 and "1/1 shards" in capsys.readouterr().out
    assert len(FeatureCache(tmp_path / "c")) == 5
    with pytest.raises(SystemExit):
        main(["bridge", "features", "--help"])
    assert f"else {features.SHARD_SIZE})" in " ".join(capsys.readouterr().out.split())  # the help names the default


def _mark_unfinished(cache_dir: Path) -> None:
    """As if the run had stopped after writing its shards but before the manifest said so."""
    path = cache_dir / "manifest.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"complete": False}))


def test_cli_and_training_resume_each_others_cache(exported, fake_run, tmp_path, monkeypatch):
    """A cache begun by `sefar bridge features` (its default shard size) is resumed by the training recipe's
    feature_cache, and the other way round, without extracting anything again."""
    data = _videos(fake_run).parent
    questions = [Question(id=f"q{i}", clip_id=f"clip{i}", question="What move?", options=("a", "b"), answer=0,
                          type="element", level="element", split="train") for i in range(len(LABELS))]
    write_questions(tmp_path / "train.jsonl", questions)
    cfg = load_config(None, ["encoder.kind=sefar", f"encoder.export={exported}",
                             f"data.train_questions={tmp_path / 'train.jsonl'}", f"data.train_list={data / 'val.txt'}",
                             f"data.videos={_videos(fake_run)}"])
    ids = {q.clip_id for q in questions}
    calls = []
    real = features._extract_shard
    monkeypatch.setattr(features, "_extract_shard", lambda enc, ids, *a: calls.append(list(ids)) or real(enc, ids, *a))

    by_cli = tmp_path / "by_cli"  # the CLI on the sub-list feature_cache writes, then training takes over
    sublist = write_clip_sublist(data / "val.txt", ids, by_cli / "train_clips.txt")
    cli = ["bridge", "features", str(exported), str(sublist), str(by_cli / "train"), "--videos-root",
           str(_videos(fake_run)), "--workers", "0"]
    assert main(cli) == 0 and len(calls) == 1
    written = json.loads((by_cli / "train" / "manifest.json").read_text())["shard_size"]
    _mark_unfinished(by_cli / "train")
    cache = feature_cache(cfg, "train", by_cli)
    assert len(calls) == 1 and cache.manifest["complete"] and len(cache) == len(ids)
    assert cache.manifest["shard_size"] == written

    by_training = tmp_path / "by_training"  # training first, then the CLI with its defaults
    feature_cache(cfg, "train", by_training)
    assert len(calls) == 2
    _mark_unfinished(by_training / "train")
    cli[3:5] = [str(by_training / "train_clips.txt"), str(by_training / "train")]
    assert main(cli) == 0 and len(calls) == 2
    assert FeatureCache(by_training / "train").manifest["complete"]
