"""Typed errors for bad input. Each renders as one line that names the file and the problem."""

from __future__ import annotations

import os


class DataError(Exception):
    """Base class: ``str(err)`` is ``"<path>[:<line>]: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str, line: int | None = None):
        self.path = os.fspath(path)
        self.reason = reason
        self.line = line
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}")


class VideoReadError(DataError):
    """A video (file or frame folder) is missing, empty, truncated, corrupt or has no frames."""


class ListFormatError(DataError, ValueError):
    """A list, categories or annotation file has a malformed line or entry."""


class ConfigError(ValueError):
    """A configuration is invalid; the message lists every problem and how to fix it."""
