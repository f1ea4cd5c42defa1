"""The clip id: one key for a list entry, shared by the feature cache, Gym-QA and the bridge.

A list path with its extension removed, reduced to the file name for absolute paths
(``/root/video/<id>.mp4`` -> ``<id>``, ``Class/v_x.avi`` -> ``Class/v_x``, a bare FineGym id stays itself),
plus ``@<start>-<end>`` for entries trimmed to a time range.
"""

from __future__ import annotations

import os
import re

_WINDOWS_ABS = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


def clip_id(path: str, start: float | None = None, end: float | None = None) -> str:
    """The clip id of a list entry ``path [start end]`` (rules in the module docstring)."""
    parts = [p for p in re.split(r"[\\/]", path) if p]
    if not parts:
        raise ValueError(f"empty clip path {path!r}")
    if path.startswith("/") or _WINDOWS_ABS.match(path):
        parts = parts[-1:]
    parts[-1] = os.path.splitext(parts[-1])[0] or parts[-1]
    key = "/".join(parts)
    return key if start is None else f"{key}@{start:g}-{end:g}"
