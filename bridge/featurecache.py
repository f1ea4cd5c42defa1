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

__all__ = ["FORMAT", "MANIFEST_FILE", "shard_name", "read_manifest", "check_feature_width", "FeatureCache",
           "load_features"]

FORMAT = "sefar-features"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def _is_int(value: object, low: int = 0) -> bool:
    return type(value) is int and value >= low


def _manifest_problem(m: dict) -> str | None:
    """What is wrong with the fields of a manifest that the readers use (None: nothing)."""
    shapes, layout = m.get("shapes"), m.get("layout")
    if not isinstance(shapes, dict) or not shapes or not all(
            isinstance(v, list) and v and all(_is_int(d, 1) for d in v) for v in shapes.values()):
        return "shapes must map each feature name to a list of positive sizes"
    elements = sum(1 for name in shapes if name.startswith("element_tokens."))
    if [f"element_tokens.{i}" for i in range(elements)] != [n for n in shapes if n.startswith("element_tokens.")]:
        return "shapes must name element_tokens.0, element_tokens.1, ... in order"
    if not elements or any(len(shapes[f"element_tokens.{i}"]) != 3 for i in range(elements)):
        return "shapes must give each element_tokens.<i> as [frames, tokens, width]"
    if len({shapes[f"element_tokens.{i}"][-1] for i in range(elements)}) != 1:
        return "the element_tokens.<i> shapes must share one width"
    if not isinstance(layout, list) or len(layout) != elements or not all(
            isinstance(e, list) and len(e) == shapes[f"element_tokens.{i}"][0] and all(_is_int(f) for f in e)
            for i, e in enumerate(layout)):
        return "layout must list each element's frame indices, as many as its element_tokens.<i> frames"
    if not isinstance(m.get("clips"), dict) or not all(_is_int(v) for v in m["clips"].values()):
        return "clips must map clip ids to shard numbers"
    if not isinstance(m.get("done_shards"), list) or not all(_is_int(v) for v in m["done_shards"]):
        return "done_shards must be a list of shard numbers"
    if not isinstance(m.get("skipped"), dict) or not all(isinstance(v, str) for v in m["skipped"].values()):
        return "skipped must map clip ids to reasons"
    if not _is_int(m.get("num_shards")) or not _is_int(m.get("shard_size"), 1):
        return "num_shards and shard_size must be integers"
    if any(v >= m["num_shards"] for v in [*m["clips"].values(), *m["done_shards"]]):
        return f"a shard number is beyond num_shards={m['num_shards']}"
    return None


def read_manifest(path: Path) -> dict:
    """A cache's ``manifest.json``, checked for its format and the fields its readers use."""
    manifest = read_json_object(path, "missing: not a feature cache written by extract_features")
    if manifest.get("format") != FORMAT:
        raise DataError(path, f"not a feature cache manifest (format={manifest.get('format')!r})")
    if (problem := _manifest_problem(manifest)) is not None:
        raise DataError(path, f"damaged feature cache manifest: {problem}")
    return manifest


def check_feature_width(cache: "FeatureCache", width: int, fused_dim: int | None = None) -> None:
    """A :class:`DataError` naming the manifest when the cached features are not ``width`` wide (the adapter's),
    or, for an adapter that reads the fused feature (``fused_dim``), when the cached one is missing or of another
    width."""
    if cache.width != width:
        raise DataError(cache.root / MANIFEST_FILE, f"the cached features have width {cache.width}, the adapter "
                        f"takes width {width} (features of another encoder?)")
    if fused_dim is not None and cache.fused_width != fused_dim:
        found = "no fused feature" if cache.fused_width is None else f"a fused feature of width {cache.fused_width}"
        raise DataError(cache.root / MANIFEST_FILE, f"the cache holds {found}, the adapter (adapter.use_fused) takes "
                        f"one of width {fused_dim} (features of another encoder?)")


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
    def width(self) -> int:
        """Width of the cached element tokens (the adapter's ``feature_dim``)."""
        return self.manifest["shapes"]["element_tokens.0"][-1]

    @property
    def fused_width(self) -> int | None:
        """Width of the cached fused feature (the adapter's ``fused_dim``), None for a cache without one."""
        shape = self.manifest["shapes"].get("fused")
        return None if shape is None else shape[-1]

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
                features = {name: f.get_tensor(f"{key}/{name}") for name in self.manifest["shapes"]}
        except (SafetensorError, OSError) as err:
            raise DataError(shard, f"unreadable shard ({' '.join(str(err).split())})") from None
        for name, tensor in features.items():
            if list(tensor.shape) != self.manifest["shapes"][name]:
                raise DataError(shard, f"clip {key!r}: {name} has shape {list(tensor.shape)}, the manifest says "
                                       f"{self.manifest['shapes'][name]}")
            if not tensor.is_floating_point() or not bool(tensor.isfinite().all()):
                raise DataError(shard, f"clip {key!r}: {name} holds NaN or infinite values (or is not floating point)")
        return features


def load_features(cache_dir: str | os.PathLike, clip_id: str) -> dict[str, Tensor]:
    """The cached tensors of one clip: ``fused (F,)``, ``element_cls (E, D)``, ``element_tokens.<i> (L_i, N, D)``.

    For many clips, keep one :class:`FeatureCache` instead (this reads the manifest on every call).
    """
    return FeatureCache(cache_dir)[clip_id]
