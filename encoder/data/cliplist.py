"""Clip lists for the stages that read clips by id: ``path label [start end]`` entries with resolved videos.

The cache key of an entry is :func:`common.clipid.clip_id` of its path and time range (the same id Gym-QA uses).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from common.clipid import clip_id as common_clip_id
from common.errors import ListFormatError
from encoder.data.splits import Sample, read_samples, resolve_paths

__all__ = ["ClipList", "clip_id", "read_clip_list"]


class ClipList(NamedTuple):
    """A list's clips: ids (see :func:`clip_id`) and samples with resolved video paths, in list order."""

    ids: list[str]
    samples: list[Sample]


def clip_id(sample: Sample) -> str:
    """The cache key of a list entry: :func:`common.clipid.clip_id` of its path and time range."""
    return common_clip_id(sample.path, sample.start, sample.end)


def read_clip_list(
    list_path: str | os.PathLike, videos_root: str | os.PathLike | None = None, video_suffix: str = ".mp4"
) -> ClipList:
    """Read a ``path label [start end]`` list and resolve its videos.

    With ``videos_root``, paths are mapped onto it as :func:`encoder.data.splits.resolve_paths` does; without,
    relative paths are taken relative to the list's folder and absolute ones kept. An entry without a file
    suffix that is not a folder (a bare FineGym clip id) gets ``video_suffix``. Repeated ids are an error.
    """
    raw = read_samples(list_path)
    if videos_root is not None:
        resolved = resolve_paths(raw, videos_root)
    else:
        base = Path(list_path).parent
        resolved = [Sample(os.fspath(base / s.path), s.label, s.start, s.end) for s in raw]
    samples = []
    for s in resolved:
        path = Path(s.path)
        if video_suffix and not path.suffix and not path.is_dir():
            s = Sample(s.path + video_suffix, s.label, s.start, s.end)
        samples.append(s)
    ids = [clip_id(s) for s in raw]
    seen: dict[str, int] = {}
    for i, key in enumerate(ids):
        if key in seen:
            raise ListFormatError(list_path, f"entries {seen[key] + 1} and {i + 1} map to the same clip id {key!r}")
        seen[key] = i
    return ClipList(ids, samples)
