"""FineGym preparation end to end on tiny synthetic broadcasts (encoder/data/prepare.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from encoder.data.prepare import (
    ELEMENTS_DIR,
    EVENTS_DIR,
    SUMMARY_FILE,
    PrepareSummary,
    format_summary,
    prepare_finegym,
    write_video,
)
from encoder.data.video import read_frames, video_info
from sefar.cli import main

FPS = 10


def _pattern(i: int) -> tuple[int, int]:
    """Grey levels (top half, bottom half) that encode frame ``i < 64`` robustly to re-encoding (error < 8)."""
    return (i % 16) * 16 + 8, (i // 16) * 64 + 32


def _broadcast(path: Path, seconds: float, size: tuple[int, int] = (48, 64)) -> Path:
    """A source video whose frames say their own frame number (see :func:`_pattern`)."""
    n, (h, w) = int(seconds * FPS), size
    frames = np.zeros((n, h, w, 3), np.uint8)  # (T, H, W, C)
    for i in range(n):
        frames[i, : h // 2], frames[i, h // 2 :] = _pattern(i)
    return write_video(path, frames, FPS)


def _source_indices(path: Path) -> list[int]:
    """The source frame number of every frame of a clip, read back from its grey levels."""
    frames = read_frames(path).astype(np.float64)  # (T, H, W, C)
    q = frames.shape[1] // 4
    top, bottom = frames[:, :q].mean(axis=(1, 2, 3)), frames[:, -q:].mean(axis=(1, 2, 3))  # (T,)
    return [round((b - 32) / 64) * 16 + round((t - 8) / 16) for t, b in zip(top, bottom)]


def _event(start: float, end: float, segments: dict | None, code: int = 2) -> dict:
    return {"event": code, "timestamps": [[start, end]], "segments": segments}


ANNOTATION = {
    "vidA": {  # 6 s, mp4
        "E_000001_000004": _event(1.0, 4.0, {
            "A_0000_0001": {"stages": 1, "timestamps": [[0.5, 1.5]]},
            "A_0001_0002": {"stages": 3, "timestamps": [[1.0, 1.3], [1.3, 1.7], [1.7, 2.5]]},
        }, code=1),
        "E_000004_000005": _event(4.2, 5.5, {"A_0000_0001": {"stages": 1, "timestamps": [[0.2, 1.0]]}}),
        "E_000005_000009": _event(5.0, 9.0, {"A_0002_0003": {"stages": 1, "timestamps": [[2.0, 3.0]]}}),
        "E_000000_000001": _event(0.0, 1.0, None),  # no element annotation: not cut
    },
    "vid_B-2": {"E_000000_000002": _event(0.5, 2.5, {"A_0000_0001": {"stages": 1, "timestamps": [[0.0, 1.0]]}})},
    "gone": {"E_000010_000020": _event(10.0, 20.0, {"A_0001_0002": {"stages": 1, "timestamps": [[1.0, 2.0]]}})},
    "broken": {"E_000001_000002": _event(1.0, 2.0, {"A_0000_0001": {"stages": 1, "timestamps": [[0.0, 0.5]]}})},
}


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, Path]:
    videos = tmp_path / "videos"
    videos.mkdir()
    _broadcast(videos / "vidA.mp4", 6.0)
    _broadcast(videos / "vid_B-2.mkv", 3.0)
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    annotations = tmp_path / "finegym_annotation_info_v1.1.json"
    annotations.write_text(json.dumps(ANNOTATION))
    return videos, annotations


def _listing(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_write_video_round_trip_and_odd_sizes(tmp_path):
    path = _broadcast(tmp_path / "v.mp4", 1.0, size=(33, 47))
    info = video_info(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (10, 10.0, 46, 32)
    assert _source_indices(path) == list(range(10))
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "w.mp4", np.zeros((2, 8, 8, 3), np.float32), FPS)


def test_prepare_two_stages_resume_and_summary(dataset, tmp_path):
    videos, annotations = dataset
    out = tmp_path / "out"
    summary = prepare_finegym(videos, annotations, out, workers=2, short_side=32)

    events, elements = out / EVENTS_DIR, out / ELEMENTS_DIR
    assert sorted(_listing(events)) == [
        "vidA_E_000001_000004.mp4", "vidA_E_000004_000005.mp4", "vidA_E_000005_000009.mp4",
        "vid_B-2_E_000000_000002.mp4",
    ]
    first_event = events / "vidA_E_000001_000004.mp4"
    info = video_info(first_event)
    assert (info.width, info.height, info.fps) == (42, 32, 10.0)  # 64x48 scaled to short side 32, even sizes
    assert _source_indices(first_event) == list(range(10, 40))  # [1.0, 4.0) s at 10 fps
    assert _source_indices(events / "vidA_E_000005_000009.mp4") == list(range(50, 60))  # cut at the video end
    assert _source_indices(events / "vid_B-2_E_000000_000002.mp4") == list(range(5, 25))  # mkv source

    assert sorted(_listing(elements)) == [
        "vidA_E_000001_000004_A_0000_0001.mp4", "vidA_E_000001_000004_A_0001_0002.mp4",
        "vidA_E_000004_000005_A_0000_0001.mp4", "vid_B-2_E_000000_000002_A_0000_0001.mp4",
    ]
    assert _source_indices(elements / "vidA_E_000001_000004_A_0000_0001.mp4") == list(range(15, 25))
    assert _source_indices(elements / "vidA_E_000001_000004_A_0001_0002.mp4") == list(range(20, 35))  # 3 stages
    assert _source_indices(elements / "vidA_E_000004_000005_A_0000_0001.mp4") == list(range(44, 52))
    assert video_info(elements / "vid_B-2_E_000000_000002_A_0000_0001.mp4").width == 42

    assert (summary.events.written, summary.events.skipped) == (4, 0)
    assert sorted(summary.events.failed) == ["broken_E_000001_000002", "gone_E_000010_000020"]
    assert summary.missing_videos == ["gone"]
    assert list(summary.unreadable_videos) == ["broken"]
    assert str(videos / "broken.mp4") in summary.unreadable_videos["broken"]
    assert (summary.elements.written, summary.elements.skipped) == (4, 0)
    assert summary.elements.failed["vidA_E_000005_000009_A_0002_0003"] == (
        "no frames in [2, 3) s of vidA_E_000005_000009.mp4")
    assert summary.elements.failed["gone_E_000010_000020_A_0001_0002"].startswith(
        "event clip gone_E_000010_000020 unavailable: source video missing: ")
    assert not summary.ok
    assert json.loads((out / SUMMARY_FILE).read_text()) == summary.to_dict()
    text = format_summary(summary)
    assert "events    written 4, skipped (already done) 0, failed 2" in text
    assert "missing source videos (1): gone" in text and "unreadable: " in text
    assert not [p for p in list(events.iterdir()) + list(elements.iterdir()) if p.name.startswith(".")]

    # second run: everything made is kept untouched; the same sources fail again
    before = _listing(events) | _listing(elements)
    again = prepare_finegym(videos, annotations, out, workers=1, short_side=32)
    assert (again.events.written, again.events.skipped) == (0, 4)
    assert (again.elements.written, again.elements.skipped) == (0, 4)
    assert again.events.failed == summary.events.failed
    assert _listing(events) | _listing(elements) == before

    # a deleted clip, a corrupt clip and a stale temporary from a killed run are repaired / removed
    (elements / "vidA_E_000001_000004_A_0000_0001.mp4").unlink()
    (events / "vid_B-2_E_000000_000002.mp4").write_bytes(b"half a file")
    (events / ".vidA_E_000001_000004.123.tmp.mp4").write_bytes(b"partial")
    third = prepare_finegym(videos, annotations, out, workers=1, short_side=32)
    assert (third.events.written, third.events.skipped) == (1, 3)
    assert (third.elements.written, third.elements.skipped) == (1, 3)
    assert _source_indices(events / "vid_B-2_E_000000_000002.mp4") == list(range(5, 25))
    assert not (events / ".vidA_E_000001_000004.123.tmp.mp4").exists()


def test_cli_prepare_prints_summary_and_fails_on_missing(dataset, tmp_path, capsys):
    videos, annotations = dataset
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"vid_B-2": ANNOTATION["vid_B-2"], "gone": ANNOTATION["gone"]}))
    out = tmp_path / "out"
    code = main(["data", "prepare", "finegym", "--videos", str(videos), "--annotations", str(small),
                 "--out", str(out), "--short-side", "0"])
    assert code == 1
    printed = capsys.readouterr().out
    assert "missing source videos (1): gone" in printed
    assert f"summary: {out / SUMMARY_FILE}" in printed
    assert video_info(out / EVENTS_DIR / "vid_B-2_E_000000_000002.mp4").width == 64  # --short-side 0 keeps size
    assert PrepareSummary().ok


def test_cli_prepare_reports_bad_annotation(tmp_path, capsys):
    bad = tmp_path / "ann.json"
    bad.write_text('{"vid": {"E_000001_000002": {"event": 9, "timestamps": [[1, 2]], "segments": null}}}')
    (tmp_path / "videos").mkdir()
    code = main(["data", "prepare", "finegym", "--videos", str(tmp_path / "videos"), "--annotations", str(bad),
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}: vid/E_000001_000002: 'event' must be one of")


def test_cli_synth_writes_syngym_and_prints_its_summary(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["data", "synth", "--out", str(out), "--seed", "7", "--size", "tiny", "--workers", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["seed"], manifest["size"]) == (7, "tiny")
    assert f"SynGym v{manifest['version']} (tiny, seed 7)" in capsys.readouterr().out
