"""Read the frames a model needs from a video file or a frame folder.

* decord is the primary decoder: it seeks to the requested frames instead of decoding the whole file;
* PyAV is the fallback for what decord cannot open (GIF, some AVI/MKV variants);
* a folder of ``jpg``/``png`` frames (as FineDiving ships) is read directly with Pillow.

Every reader returns ``uint8`` frames shaped ``(T, H, W, C)`` (RGB), optionally resized so that the short side
has ``short_side`` pixels. A video can be trimmed to ``[start, end)`` given in seconds (``unit="sec"``, as in
FineGym's annotation) or in frames (``unit="frame"``); frame indices are then relative to ``start``.

A missing, empty, truncated, corrupt or zero-frame input raises :class:`VideoReadError`, whose message is one line
naming the file and the problem.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from common.errors import VideoReadError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
PYAV_FIRST_SUFFIXES = (".gif",)


@dataclass(frozen=True)
class VideoInfo:
    """What a reader knows about a (possibly trimmed) video."""

    num_frames: int
    fps: float
    width: int
    height: int


@dataclass(frozen=True)
class _Range:
    first: int  # first frame of the trimmed range, in frames of the whole video
    count: int  # frames in the trimmed range


def video_info(
    path: str | os.PathLike, *, start: float | None = None, end: float | None = None, unit: str = "sec"
) -> VideoInfo:
    """Frame count (of the trimmed range), fps and size, without decoding all frames."""
    path = _check_exists(path)
    backend = _backend(path)
    info, handle = backend.open_info(path)
    rng = _trim(path, info, start, end, unit)
    width, height = (info.width, info.height) if info.width > 0 else backend.size(path, handle)
    return VideoInfo(rng.count, info.fps, width, height)


@dataclass(frozen=True)
class VideoCheck:
    """The result of :func:`verify_video`: the (trimmed) video's info, the frame count its container declares
    (``None`` when it declares none) and, for a deep check, the frames decoded and the seconds it took."""

    info: VideoInfo
    declared_frames: int | None
    decoded_frames: int | None = None
    seconds: float = 0.0


def verify_video(
    path: str | os.PathLike, *, start: float | None = None, end: float | None = None, deep: bool = False
) -> VideoCheck:
    """Check that a video is whole, raising :class:`VideoReadError` with the reason when it is not.

    The quick check (the default) compares the frame count the container declares (its index, or its duration
    times its frame rate) with the count the reader finds, checks that a GIF ends with its trailer, and decodes
    the first and the last frame of the (trimmed) range, the last index a sampler can ask for: a file cut after
    its index was written (MP4 ``faststart``, WebM, AVI, GIF) fails one of these. ``deep`` decodes every frame of
    the range and compares the count with the declared one.
    """
    path = _check_exists(path)
    began = time.perf_counter()
    info = video_info(path, start=start, end=end)
    declared = None
    if not path.is_dir():
        declared = _declared_frames(path)
        whole = video_info(path) if start is not None or end is not None else info
        if declared is not None and _too_few(whole.num_frames, declared):
            raise VideoReadError(path, f"truncated: the container declares {declared} frames, "
                                       f"the reader finds {whole.num_frames}")
    read_frames(path, [0, info.num_frames - 1], start=start, end=end)
    if not deep:
        return VideoCheck(info, declared, None, time.perf_counter() - began)
    decoded = len(read_frames(path, start=start, end=end))
    if declared is not None and start is None and end is None and _too_few(decoded, declared):
        raise VideoReadError(path, f"truncated: the container declares {declared} frames, {decoded} decode")
    return VideoCheck(info, declared, decoded, time.perf_counter() - began)


def read_frames(
    path: str | os.PathLike,
    indices: Sequence[int] | np.ndarray | Callable[[int], np.ndarray] | None = None,
    *,
    start: float | None = None,
    end: float | None = None,
    unit: str = "sec",
    short_side: int | None = None,
) -> np.ndarray:
    """Frames ``indices`` (relative to ``start``; all frames when ``None``) as uint8 ``(T, H, W, C)``.

    Indices may repeat and need not be sorted; each must lie inside the (trimmed) video. ``indices`` may also be
    a function of the (trimmed) frame count, so that a clip is opened only once, e.g.
    ``read_frames(p, lambda n: segment_frame_indices(n, 8, train=False))``.
    """
    path = _check_exists(path)
    backend = _backend(path)
    info, handle = backend.open_info(path)
    rng = _trim(path, info, start, end, unit)
    if callable(indices):
        indices = indices(rng.count)
    wanted = np.arange(rng.count) if indices is None else np.asarray(indices, dtype=np.int64)
    if wanted.size and (wanted.min() < 0 or wanted.max() >= rng.count):
        raise VideoReadError(path, f"frame index out of range: asked {wanted.min()}..{wanted.max()}, has {rng.count}")
    absolute = wanted + rng.first
    unique, inverse = np.unique(absolute, return_inverse=True)  # decode each frame once, in file order
    try:
        frames = backend.decode(path, handle, unique, info)
    except VideoReadError:
        raise
    except Exception as err:  # decoder libraries raise many types; report one line
        raise VideoReadError(path, f"truncated or corrupt: {_one_line(err)}") from err
    if len(frames) != len(unique):
        raise VideoReadError(path, f"truncated: decoded {len(frames)} of {len(unique)} requested frames")
    out = frames[inverse]  # (T, H, W, C)
    return resize_short_side(out, short_side) if short_side else out


def resize_short_side(frames: np.ndarray, short_side: int) -> np.ndarray:
    """Resize uint8 ``(T, H, W, C)`` frames so that min(H, W) == short_side (bilinear, antialiased).

    Runs torch's uint8 channels-last kernel directly (no float copy): about 10x faster than a float resize.
    """
    import torch
    import torch.nn.functional as F

    t, h, w, _ = frames.shape
    if min(h, w) == short_side:
        return frames
    scale = short_side / min(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (T, C, H, W), channels-last memory
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).contiguous().numpy()  # (T, H', W', C) uint8


# --------------------------------------------------------------------------------------------------- helpers


def _check_exists(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise VideoReadError(p, "file does not exist")
    if p.is_file() and p.stat().st_size == 0:
        raise VideoReadError(p, "file is empty (0 bytes)")
    return p


def _too_few(found: int, declared: int) -> bool:
    """Whether ``found`` frames fall short of a container's ``declared`` count by more than rounding of a
    duration-based count can explain (one frame, or 2% of long videos)."""
    return declared - found > max(1, declared // 50)


def _declared_frames(path: Path) -> int | None:
    """The frame count the container states in its header or index, read with PyAV; ``None`` if it states none.

    A GIF states none (ffmpeg counts its frames by scanning), so its trailer byte is checked instead.
    """
    import av

    if path.suffix.lower() == ".gif":
        _check_gif_trailer(path)
        return None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            if stream.frames > 0:
                return int(stream.frames)
            rate = stream.average_rate or stream.guessed_rate
            seconds = _stream_seconds(stream)
            if seconds is None and container.duration and len(container.streams) == 1:
                seconds = container.duration / 1_000_000  # the container's is the longest stream's (audio too)
            if seconds and rate:
                return int(round(seconds * float(rate)))
    except Exception:  # unreadable headers are reported by the reader itself
        return None
    return None


def _stream_seconds(stream) -> float | None:
    """A video stream's own duration: its header field, or Matroska's per-track ``DURATION`` tag."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION", "")
    try:
        h, m, sec = tag.split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return None


def _check_gif_trailer(path: Path) -> None:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 64))
        tail = f.read().rstrip(b"\0")
    if not tail.endswith(b"\x3b"):
        raise VideoReadError(path, "truncated: the GIF does not end with its trailer byte")


_QUIET_LOCK = threading.Lock()
_quiet_depth = 0  # threads inside _quiet_stderr; the first one in redirects fd 2, the last one out restores it
_saved_stderr = -1


@contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (where decord's C++ code logs ``ERROR opening ...`` whatever its log level), so
    the caller's one-line :class:`VideoReadError` is the only report of a file decord cannot open.
    Thread-safe: overlapping uses share one redirection."""
    global _quiet_depth, _saved_stderr
    with _QUIET_LOCK:
        if _quiet_depth == 0:
            sys.stderr.flush()
            _saved_stderr = os.dup(2)
            with open(os.devnull, "wb") as devnull:
                os.dup2(devnull.fileno(), 2)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                os.dup2(_saved_stderr, 2)
                os.close(_saved_stderr)


def _one_line(err: BaseException) -> str:
    # PyAV's errors repeat the file name after the message; the caller names the file already.
    text = getattr(err, "strerror", None) or str(err)
    text = " ".join(text.split()) or type(err).__name__
    return text[:200]


def _trim(path: Path, info: VideoInfo, start: float | None, end: float | None, unit: str) -> _Range:
    if info.num_frames <= 0:
        raise VideoReadError(path, "video has no frames")
    if unit not in ("sec", "frame"):
        raise ValueError(f"unit must be 'sec' or 'frame', not {unit!r}")
    to_frame = (lambda v: int(round(v * info.fps))) if unit == "sec" else (lambda v: int(v))
    first = 0 if start is None else max(0, to_frame(start))
    stop = info.num_frames if end is None else min(info.num_frames, to_frame(end))
    if stop <= first:
        raise VideoReadError(path, f"trim range [{start}, {end}) {unit} holds no frames (video has {info.num_frames})")
    return _Range(first, stop - first)


class _Decord:
    @staticmethod
    def open_info(path: Path):
        """Opens the file and reads its index; the frame size is only known after decoding (see ``size``)."""
        import decord

        decord.logging.set_level(decord.logging.QUIET)
        try:
            with _quiet_stderr():
                vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        except Exception as err:
            raise _DecordCannotOpen(err) from err
        n = len(vr)
        if n == 0:
            raise VideoReadError(path, "video has no frames")
        fps = float(vr.get_avg_fps()) or 25.0
        return VideoInfo(n, fps, -1, -1), vr

    @staticmethod
    def size(path: Path, vr) -> tuple[int, int]:
        try:
            with _quiet_stderr():
                h, w = vr[0].shape[:2]
        except Exception as err:
            raise VideoReadError(path, f"truncated or corrupt: {_one_line(err)}") from err
        vr.seek(0)
        return w, h

    @staticmethod
    def decode(path: Path, vr, frames: np.ndarray, info: VideoInfo) -> np.ndarray:
        with _quiet_stderr():  # decord logs seek failures itself; the caller reports them in one line
            return vr.get_batch(frames.tolist()).asnumpy()  # (T, H, W, C)


class _DecordCannotOpen(Exception):
    pass


class _PyAV:
    @staticmethod
    def open_info(path: Path):
        import av

        try:
            container = av.open(str(path))
        except Exception as err:
            raise VideoReadError(path, f"cannot open: {_one_line(err)}") from err
        try:
            if not container.streams.video:
                raise VideoReadError(path, "no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 25.0)
            n = stream.frames
            if n <= 0:  # containers without a frame count (GIF, some AVI): count by decoding
                n = sum(1 for _ in container.decode(video=0))
            w, h = stream.codec_context.width, stream.codec_context.height
        except VideoReadError:
            raise
        except Exception as err:
            raise VideoReadError(path, f"corrupt: {_one_line(err)}") from err
        finally:
            container.close()
        return VideoInfo(n, fps, w, h), None

    @staticmethod
    def decode(path: Path, _handle, frames: np.ndarray, info: VideoInfo) -> np.ndarray:
        import av

        wanted = set(frames.tolist())
        last = int(frames.max()) if frames.size else -1
        out: list[np.ndarray] = []
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    out.append(frame.to_ndarray(format="rgb24"))
                if i >= last:
                    break
        if len(out) != len(frames):
            raise VideoReadError(path, f"truncated: stream ended after {len(out)} of {len(frames)} requested frames")
        return np.stack(out)  # (T, H, W, C)


class _FrameFolder:
    @staticmethod
    def _files(path: Path) -> list[Path]:
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    @classmethod
    def open_info(cls, path: Path, fps: float = 25.0):
        from PIL import Image

        files = cls._files(path)
        if not files:
            raise VideoReadError(path, f"frame folder holds no {'/'.join(IMAGE_SUFFIXES)} images")
        try:
            with Image.open(files[0]) as im:
                w, h = im.size
        except Exception as err:
            raise VideoReadError(files[0], f"corrupt image: {_one_line(err)}") from err
        return VideoInfo(len(files), fps, w, h), files

    @staticmethod
    def decode(path: Path, files: list[Path], frames: np.ndarray, info: VideoInfo) -> np.ndarray:
        from PIL import Image

        out = []
        for i in frames.tolist():
            try:
                with Image.open(files[i]) as im:
                    img = np.asarray(im.convert("RGB"))
            except Exception as err:
                raise VideoReadError(files[i], f"corrupt image: {_one_line(err)}") from err
            if img.shape[:2] != (info.height, info.width):
                raise VideoReadError(files[i], f"frame size {img.shape[1]}x{img.shape[0]} differs from the first frame")
            out.append(img)
        return np.stack(out)  # (T, H, W, C)


class _Auto:
    """decord first, PyAV when decord cannot open the file."""

    def __init__(self) -> None:
        self.impl: type = _Decord

    def open_info(self, path: Path):
        try:
            return _Decord.open_info(path)
        except (_DecordCannotOpen, ImportError):  # decord cannot open it, or is not installed
            self.impl = _PyAV
            return _PyAV.open_info(path)

    def decode(self, path: Path, handle, frames: np.ndarray, info: VideoInfo) -> np.ndarray:
        if self.impl is _PyAV:
            return _PyAV.decode(path, handle, frames, info)
        try:
            return _Decord.decode(path, handle, frames, info)
        except Exception:  # decord 0.6 fails on some valid files (e.g. widths 48 or 72): let PyAV judge
            return _PyAV.decode(path, None, frames, info)

    def size(self, path: Path, handle) -> tuple[int, int]:
        return self.impl.size(path, handle)


def _backend(path: Path):
    if path.is_dir():
        return _FrameFolder
    if path.suffix.lower() in PYAV_FIRST_SUFFIXES:
        return _PyAV
    return _Auto()

