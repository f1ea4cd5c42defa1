"""Checks on an uploaded clip before any model sees it: file type, size and duration.

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

__all__ = ["VIDEO_SUFFIXES", "UploadLimits", "check_upload", "display_name"]

_logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".gif")


@dataclass(frozen=True)
class UploadLimits:
    """Largest accepted upload (MB of 2**20 bytes, as Gradio counts them) and longest accepted clip (seconds)."""

    max_mb: float = 50.0
    max_seconds: float = 60.0

    def __post_init__(self) -> None:
        errors = []
        if not self.max_mb > 0:
            errors.append(f"max_mb={self.max_mb}: set a positive upload size limit in MB")
        if not self.max_seconds > 0:
            errors.append(f"max_seconds={self.max_seconds}: set a positive clip duration limit in seconds")
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
    return seconds
