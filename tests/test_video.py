import numpy as np
import pytest

from common.errors import VideoReadError
from encoder.data.video import read_frames, resize_short_side, video_info
from tests.videos import frame_value, write_frame_folder, write_video

CONTAINERS = [
    ("clip.mp4", "libx264", "yuv420p"),
    ("clip.avi", "mpeg4", "yuv420p"),
    ("clip.mkv", "libx264", "yuv420p"),
    ("clip.webm", "libvpx-vp9", "yuv420p"),
    ("clip.gif", "gif", "rgb8"),
]


def red_levels(frames: np.ndarray) -> np.ndarray:
    return frames[:, frames.shape[1] // 2, frames.shape[2] // 2, 0].astype(int)


@pytest.mark.parametrize("name,codec,pix_fmt", CONTAINERS)
def test_reads_requested_frames_from_each_container(tmp_path, name, codec, pix_fmt):
    path = write_video(tmp_path / name, n=30, codec=codec, pix_fmt=pix_fmt)
    info = video_info(path)
    assert (info.num_frames, info.width, info.height) == (30, 64, 48)
    assert info.fps == pytest.approx(10, rel=0.01)
    idx = [0, 7, 7, 29, 3]
    frames = read_frames(path, idx)
    assert frames.dtype == np.uint8 and frames.shape == (5, 48, 64, 3)
    tol = 12 if codec != "gif" else 24
    np.testing.assert_allclose(red_levels(frames), [frame_value(i) for i in idx], atol=tol)


def test_all_frames_and_short_side_resize(tmp_path):
    path = write_video(tmp_path / "a.mp4", n=12)
    frames = read_frames(path, short_side=24)
    assert frames.shape == (12, 24, 32, 3)
    assert resize_short_side(frames, 24) is frames


def test_trim_in_seconds_and_frames(tmp_path):
    path = write_video(tmp_path / "a.mp4", n=40, fps=10)
    assert video_info(path, start=1.0, end=2.5).num_frames == 15
    frames = read_frames(path, [0, 14], start=1.0, end=2.5)
    np.testing.assert_allclose(red_levels(frames), [frame_value(10), frame_value(24)], atol=12)
    frames = read_frames(path, [0], start=5, end=9, unit="frame")
    np.testing.assert_allclose(red_levels(frames), [frame_value(5)], atol=12)
    with pytest.raises(VideoReadError, match="holds no frames"):
        read_frames(path, start=5.0, end=6.0)
    with pytest.raises(VideoReadError, match="out of range"):
        read_frames(path, [15], start=1.0, end=2.5)


def test_frame_folder(tmp_path):
    folder = write_frame_folder(tmp_path / "frames", n=12)
    assert video_info(folder).num_frames == 12
    frames = read_frames(folder, [11, 0])
    np.testing.assert_allclose(red_levels(frames), [frame_value(11), frame_value(0)], atol=6)
    (folder / "00003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VideoReadError, match=r"00003\.jpg: corrupt image"):
        read_frames(folder, [3])
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(VideoReadError, match="holds no"):
        video_info(empty)


def _one_line_error(path, indices=None) -> str:
    with pytest.raises(VideoReadError) as err:
        read_frames(path, indices)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_bad_files_give_one_line_naming_the_file(tmp_path):
    assert "does not exist" in _one_line_error(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert "empty" in _one_line_error(tmp_path / "empty.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"\x00junk" * 200)
    assert "cannot open" in _one_line_error(tmp_path / "junk.mp4")


def test_truncated_file(tmp_path):
    good = write_video(tmp_path / "good.mp4", n=60, options={"movflags": "faststart"})
    data = good.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    message = _one_line_error(cut, [0, 59])
    assert "truncated" in message or "corrupt" in message
    # a file cut before its index cannot even be opened
    cut.write_bytes(write_video(tmp_path / "plain.mp4", n=60).read_bytes()[:2000])
    assert "cannot open" in _one_line_error(cut, [0])


def test_odd_widths_decord_rejects_still_read(tmp_path):
    # decord 0.6 fails to copy frames of some widths (48, 72); the reader then decodes with PyAV
    path = write_video(tmp_path / "w48.mp4", n=10, size=(48, 48))
    frames = read_frames(path, [0, 9])
    assert frames.shape == (2, 48, 48, 3)
    np.testing.assert_allclose(red_levels(frames), [frame_value(0), frame_value(9)], atol=12)


def test_reads_with_pyav_when_decord_is_missing(tmp_path, monkeypatch):
    import sys

    path = write_video(tmp_path / "a.mp4", n=12)
    monkeypatch.setitem(sys.modules, "decord", None)  # import decord -> ImportError
    frames = read_frames(path, [3, 11])
    np.testing.assert_allclose(red_levels(frames), [frame_value(3), frame_value(11)], atol=12)
