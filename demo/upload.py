"""Checks on an uploaded clip before any model sees it: file type, size, duration and decoded size.

The decoded size is judged from the container's metadata (frame size and count), before any frame is decoded:
a small file can hold frames far larger, or far more of them, than its size suggests.

Every problem raises :class:`common.errors.DataError` whose message names the uploaded file by its base name
(never the server's temporary path), so the page can show it as it is.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError, DataError, VideoReadError
from encoder.data.video import video_info

__all__ = ["VIDEO_SUFFIXES", "UploadLimits", "check_decoded_size", "check_upload", "display_name"]

_logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".gif")


# Defaults of the decoded-size limits: a 4096x2160 frame, 240 fps for a minute, and every frame of a minute of
# 4K at 30 fps or of 1080p at 120 fps.
MAX_FRAME_PIXELS = 4096 * 2160
MAX_FRAMES = 240 * 60
MAX_PIXELS = 16_000_000_000


@dataclass(frozen=True)
class UploadLimits:
    """Largest accepted upload (MB of 2**20 bytes, as Gradio counts them), longest accepted clip (seconds) and the
    largest decoded size: pixels of one frame, frames, and pixels of all frames together (width x height x frames)."""

    max_mb: float = 50.0
    max_seconds: float = 60.0
    max_frame_pixels: int = MAX_FRAME_PIXELS
    max_frames: int = MAX_FRAMES
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        errors = []
        if not self.max_mb > 0:
            errors.append(f"max_mb={self.max_mb}: set a positive upload size limit in MB")
        if not self.max_seconds > 0:
            errors.append(f"max_seconds={self.max_seconds}: set a positive clip duration limit in seconds")
        for name in ("max_frame_pixels", "max_frames", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                errors.append(f"{name}={value!r}: set a positive whole number")
        if errors:
            raise ConfigError("; ".join(errors))

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 2**20)


def display_name(path: str | os.PathLike) -> str:
    """The name a user knows the file by: Gradio keeps the original base name of an upload."""
    return Path(path).name


def check_upload(path: str | os.PathLike, limits: UploadLimits) -> float:
    """Check ``path`` against ``limits`` and that it opens as a video; returns its duration in seconds."""
    path = Path(path)
    name = display_name(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        kinds = ", ".join(s.lstrip(".") for s in VIDEO_SUFFIXES)
        raise DataError(name, f"unsupported file type {path.suffix or '(none)'!r}; upload one of {kinds}")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(name, "the upload is missing on the server; upload it again") from None
    if size > limits.max_bytes:
        raise DataError(name, f"{size / 2**20:.1f} MB is over the {limits.max_mb:g} MB upload limit")
    try:
        info = video_info(path)
    except VideoReadError as err:
        # The decoder's own message names server paths: log it, show the user a plain reason.
        _logger.info("unreadable upload %s: %s", name, err.reason)
        raise VideoReadError(name, "cannot be read as a video (corrupt, truncated or not a video file)") from None
    seconds = info.num_frames / info.fps if info.fps > 0 else 0.0
    if seconds > limits.max_seconds:
        raise DataError(name, f"{seconds:.1f} s is longer than the {limits.max_seconds:g} s clip limit")
    check_decoded_size(name, info.width, info.height, info.num_frames, limits)
    return seconds


def check_decoded_size(name: str, width: int, height: int, frames: int, limits: UploadLimits) -> None:
    """Refuse a clip whose frames (as its container declares them) would decode into too much memory or work."""
    pixels = width * height
    if pixels > limits.max_frame_pixels:
        raise DataError(name, f"{width}x{height} frames are over the {limits.max_frame_pixels:,} pixel limit "
                              "per frame; upload a smaller video")
    if frames > limits.max_frames:
        raise DataError(name, f"{frames:,} frames are over the {limits.max_frames:,} frame limit; "
                              "upload a shorter clip or one with a lower frame rate")
    if pixels * frames > limits.max_pixels:
        raise DataError(name, f"{width}x{height} x {frames:,} frames is over the {limits.max_pixels:,} decoded "
                              "pixel limit; upload a shorter or smaller clip")
