"""A feature cache folder on disk (written by :func:`bridge.features.extract_features`) and its reader.

``OUT/shard_{i:05d}.safetensors`` holds the features of the clips of shard ``i`` (``shard_size`` clips of the
list, in list order), keyed ``"<clip id>/<name>"`` with the names of the encoder's ``features()`` for one clip:

* ``fused``: ``(F,)``, ``element_cls``: ``(E, D)``, ``element_tokens.<i>``: ``(L_i, N, D)`` for element i;

and its metadata lists the clips written (``clips``) and the unreadable ones skipped (``skipped``, id -> reason).
``OUT/manifest.json`` records the encoder (path and content hash), the list (path, hash), dtype, shard size, the
shapes, ``layout`` (each element's frame indices), ``clips`` (clip id -> shard), ``done_shards``, ``skipped`` and
``complete``.
"""

from __future__ import annotations

import os
from pathlib import Path

from safetensors import SafetensorError, safe_open
from torch import Tensor

from common.errors import DataError
from common.textio import read_json_object

__all__ = ["FORMAT", "MANIFEST_FILE", "shard_name", "read_manifest", "FeatureCache", "load_features"]

FORMAT = "sefar-features"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def read_manifest(path: Path) -> dict:
    """A cache's ``manifest.json``, checked for its format."""
    manifest = read_json_object(path, "missing: not a feature cache written by extract_features")
    if manifest.get("format") != FORMAT:
        raise DataError(path, f"not a feature cache manifest (format={manifest.get('format')!r})")
    return manifest


class FeatureCache:
    """Read access to a feature cache folder: ``cache[clip_id] -> {"fused": (F,), ...}``."""

    def __init__(self, cache_dir: str | os.PathLike) -> None:
        self.root = Path(cache_dir)
        self.manifest = read_manifest(self.root / MANIFEST_FILE)
        self._done = set(self.manifest["done_shards"])
        self._skipped = self.manifest["skipped"]

    @property
    def layout(self) -> list[list[int]]:
        """Frame indices of each element of the cached ``element_tokens`` (fine elements, then context)."""
        return self.manifest["layout"]

    @property
    def clip_ids(self) -> list[str]:
        """Ids of the clips whose features are on disk, in list order."""
        return [key for key in self.manifest["clips"] if key in self]

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __contains__(self, key: object) -> bool:
        shard = self.manifest["clips"].get(key)
        return shard is not None and shard in self._done and key not in self._skipped

    def __getitem__(self, key: str) -> dict[str, Tensor]:
        manifest_path = self.root / MANIFEST_FILE
        if key not in self.manifest["clips"]:
            raise DataError(manifest_path, f"clip {key!r} is not in the cached list")
        if key in self._skipped:
            raise DataError(manifest_path, f"clip {key!r} was skipped: {self._skipped[key]}")
        shard = self.root / shard_name(self.manifest["clips"][key])
        if self.manifest["clips"][key] not in self._done:
            raise DataError(shard, f"not extracted yet (clip {key!r}); run the extraction again to finish it")
        try:
            with safe_open(os.fspath(shard), framework="pt") as f:
                return {name: f.get_tensor(f"{key}/{name}") for name in self.manifest["shapes"]}
        except (SafetensorError, OSError) as err:
            raise DataError(shard, f"unreadable shard ({' '.join(str(err).split())})") from None


def load_features(cache_dir: str | os.PathLike, clip_id: str) -> dict[str, Tensor]:
    """The cached tensors of one clip: ``fused (F,)``, ``element_cls (E, D)``, ``element_tokens.<i> (L_i, N, D)``.

    For many clips, keep one :class:`FeatureCache` instead (this reads the manifest on every call).
    """
    return FeatureCache(cache_dir)[clip_id]
