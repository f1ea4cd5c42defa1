"""Extraction of a sharded, resumable cache of frozen-encoder features for the LLM bridge.

    accelerate launch -m sefar bridge features ENCODER LIST OUT      (or plain ``sefar bridge features ...``)

ENCODER is a SeFAR export folder or a frame-wise image encoder (:class:`bridge.frames.FrameEncoderConfig`).

The clips of LIST, in list order, are cut into shards of ``shard_size`` clips. Shard ``i`` is handled by process
``i % world_size`` and written atomically as ``OUT/shard_{i:05d}.safetensors`` (the format and its reader:
:mod:`bridge.featurecache`). A shard file is complete by construction, so the shard files are the source of truth:
a second run skips every shard already on disk. ``OUT/manifest.json`` is rewritten atomically after each shard.
Resuming with another export, list, dtype or shard size is refused; a resume that names no shard size keeps the
cache's own (new caches get :data:`SHARD_SIZE`).

Clip ids (:func:`clip_id`): the list's path with its extension removed, reduced to the file name for absolute
paths (``/root/video/<id>.mp4`` -> ``<id>``, ``Class/v_x.avi`` -> ``Class/v_x``, a FineGym id stays itself),
plus ``@<start>-<end>`` for trimmed entries.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from bridge.featurecache import FORMAT, FORMAT_VERSION, MANIFEST_FILE, read_manifest, shard_name
from bridge.frames import FrameEncoder, FrameEncoderConfig
from bridge.tensorio import DTYPES, sha256_files
from common.errors import ConfigError, DataError, VideoReadError
from common.jsonio import dumps, loads
from common.textio import write_text_atomic
from encoder.data.cliplist import ClipList, clip_id, read_clip_list
from encoder.data.dataset import ClipDataset
from encoder.data.splits import Sample
from encoder.export import CONFIG_FILE, WEIGHTS_FILE, EvalTransform, FrozenEncoder, load, save_safetensors

__all__ = ["SHARD_SIZE", "ClipList", "clip_id", "read_clip_list", "extract_features", "load_visual_encoder"]

_logger = logging.getLogger(__name__)

SHARD_SIZE = 256  # clips per shard of a new cache (a cache being resumed keeps its own)


# -------------------------------------------------------------------------------------------------- manifest


def load_visual_encoder(source: str | os.PathLike | FrameEncoderConfig, device="cpu") -> FrozenEncoder | FrameEncoder:
    """A SeFAR export folder or a frame-wise encoder config -> the frozen encoder whose ``features()`` are cached."""
    if isinstance(source, FrameEncoderConfig):
        return FrameEncoder(source, device=device)
    return load(source, device=device)


def _identity(source, encoder) -> dict:
    if isinstance(encoder, FrameEncoder):
        return encoder.identity()
    export_dir = Path(source)
    return {"path": os.fspath(export_dir), "hash": sha256_files([export_dir / CONFIG_FILE, export_dir / WEIGHTS_FILE])}


def feature_shapes(encoder: FrozenEncoder | FrameEncoder) -> dict[str, list[int]]:
    """Per-clip shape of every cached tensor, from the encoder's architecture."""
    if isinstance(encoder, FrameEncoder):
        return encoder.feature_shapes()
    cfg = encoder.model.cfg
    n = (cfg.img_size // cfg.patch_size) ** 2
    shapes = {"fused": [cfg.fusion_dim], "element_cls": [encoder.layout.num_elements, cfg.embed_dim]}
    for i, length in enumerate(encoder.layout.sizes):
        shapes[f"element_tokens.{i}"] = [length, n, cfg.embed_dim]
    return shapes


def _check_resumable(existing: dict, fresh: dict, path: Path) -> None:
    """Refuse to continue a cache written for another export, list, dtype or shard size."""
    different = [
        name
        for name, key in (("export", ("export", "hash")), ("list", ("list", "hash")), ("dtype", ("dtype",)),
                          ("shard_size", ("shard_size",)))
        if _get(existing, key) != _get(fresh, key)
    ]
    if different:
        raise DataError(
            path, f"this cache was written with a different {', '.join(different)}; use a new output folder"
        )


def _get(d: dict, keys: tuple[str, ...]):
    for key in keys:
        d = d.get(key) if isinstance(d, dict) else None
    return d


def _shard_contents(path: Path) -> tuple[list[str], dict[str, str]] | None:
    """``(clips written, skipped id -> reason)`` from a shard's metadata; None when missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = f.metadata() or {}
        clips, skipped = loads(meta["clips"], path), loads(meta["skipped"], path)
        if not isinstance(clips, list) or not isinstance(skipped, dict):
            raise ValueError("clips and skipped metadata of the wrong type")
        return clips, skipped
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        _logger.warning("%s: unreadable shard, extracting it again (%s)", path, err)
        return None


def _shard_done(out: Path, index: int, expected: Sequence[str]) -> bool:
    contents = _shard_contents(out / shard_name(index))
    return contents is not None and set(contents[0]) | set(contents[1]) == set(expected)


def _shard_ids(manifest: dict) -> list[list[str]]:
    shards: list[list[str]] = [[] for _ in range(manifest["num_shards"])]
    for key, shard in manifest["clips"].items():
        shards[shard].append(key)
    return shards


def _refresh_manifest(out: Path) -> dict:
    """Rebuild ``done_shards``/``skipped``/``complete`` from the shard files and rewrite the manifest."""
    manifest = read_manifest(out / MANIFEST_FILE)
    done, skipped = [], {}
    for index, ids in enumerate(_shard_ids(manifest)):
        contents = _shard_contents(out / shard_name(index))
        if contents is not None and set(contents[0]) | set(contents[1]) == set(ids):
            done.append(index)
            skipped.update(contents[1])
    manifest.update(done_shards=done, skipped=skipped, complete=len(done) == manifest["num_shards"])
    write_text_atomic(out / MANIFEST_FILE, dumps(manifest, indent=1) + "\n")
    return manifest


# ------------------------------------------------------------------------------------------------ extraction


class _Readable(Dataset):
    """Wraps an evaluation :class:`ClipDataset`: an unreadable clip becomes ``{"index", "error"}``."""

    def __init__(self, clips: ClipDataset) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        try:
            return self.clips[index]
        except VideoReadError as err:
            return {"index": index, "error": str(err)}


def _collate(batch: list[dict]) -> dict:
    ok = [item for item in batch if "error" not in item]
    return {
        "clip": torch.stack([item["clip"][0] for item in ok]) if ok else None,  # (B, C, K, H, W)
        "index": [item["index"] for item in ok],
        "errors": {item["index"]: item["error"] for item in batch if "error" in item},
    }


def _extract_shard(
    encoder: FrozenEncoder, ids: Sequence[str], samples: Sequence[Sample], batch_size: int, dtype: torch.dtype,
    num_workers: int, progress: tqdm,
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Features of one shard's clips keyed ``"<clip id>/<name>"``, and the skipped clips with reasons."""
    pp = encoder.preprocess_config
    dataset = ClipDataset(samples, pp.num_frames, EvalTransform(pp, 1), train=False, short_side=pp.short_side)
    loader = DataLoader(_Readable(dataset), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    tensors: dict[str, Tensor] = {}
    skipped: dict[str, str] = {}
    for batch in loader:
        skipped.update({ids[i]: reason for i, reason in batch["errors"].items()})
        if batch["clip"] is not None:
            with torch.no_grad():
                out = encoder.features(batch["clip"].to(encoder.device))
            named = {"fused": out["fused"], "element_cls": out["element_cls"]}
            named.update({f"element_tokens.{i}": t for i, t in enumerate(out["element_tokens"])})
            for row, index in enumerate(batch["index"]):
                for name, value in named.items():
                    tensors[f"{ids[index]}/{name}"] = value[row].to("cpu", dtype).clone()  # own storage per clip
        progress.update(len(batch["index"]) + len(batch["errors"]))
    return tensors, skipped


def _new_manifest(source, list_path: Path, encoder, ids: list[str], shard_size: int, dtype: str) -> dict:
    num_shards = (len(ids) + shard_size - 1) // shard_size
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "export": _identity(source, encoder),
        "list": {"path": os.fspath(list_path), "hash": sha256_files([list_path]), "num_clips": len(ids)},
        "dtype": dtype,
        "shard_size": shard_size,
        "num_shards": num_shards,
        "shapes": feature_shapes(encoder),
        "layout": [list(e) for e in encoder.layout.elements],
        "clips": {key: i // shard_size for i, key in enumerate(ids)},
        "done_shards": [],
        "skipped": {},
        "complete": False,
    }


def _extract(state, export_dir, list_path, out_dir, videos_root, batch_size, shard_size, dtype, num_workers) -> dict:
    """:func:`extract_features` for one process of ``state`` (an accelerate ``PartialState`` or alike)."""
    list_path, out = Path(list_path), Path(out_dir)
    manifest_path = out / MANIFEST_FILE
    existing = read_manifest(manifest_path) if manifest_path.is_file() else None
    if shard_size is None:  # resume with the cache's own shard size, whoever began it
        shard_size = existing["shard_size"] if existing is not None else SHARD_SIZE
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)}")
    if shard_size < 1 or batch_size < 1:
        raise ConfigError(f"shard_size={shard_size}, batch_size={batch_size}: both must be >= 1")
    encoder = load_visual_encoder(export_dir, device=state.device)
    ids, samples = read_clip_list(list_path, videos_root)
    fresh = _new_manifest(export_dir, list_path, encoder, ids, shard_size, dtype)
    if existing is not None:
        _check_resumable(existing, fresh, manifest_path)  # every rank: all raise alike
    elif state.is_main_process:
        write_text_atomic(manifest_path, dumps(fresh, indent=1) + "\n")
    state.wait_for_everyone()

    mine = range(state.process_index, fresh["num_shards"], state.num_processes)
    todo = [s for s in mine if not _shard_done(out, s, ids[s * shard_size : (s + 1) * shard_size])]
    _logger.info("rank %d: %d of %d shards to extract", state.process_index, len(todo), len(mine))
    total = sum(len(ids[s * shard_size : (s + 1) * shard_size]) for s in todo)
    with tqdm(total=total, desc=f"features rank {state.process_index}", unit="clip") as progress:
        for s in todo:
            part = slice(s * shard_size, (s + 1) * shard_size)
            tensors, skipped = _extract_shard(
                encoder, ids[part], samples[part], batch_size, DTYPES[dtype], num_workers, progress
            )
            written = [key for key in ids[part] if key not in skipped]
            meta = {"clips": dumps(written), "skipped": dumps(skipped)}
            save_safetensors(out / shard_name(s), tensors, metadata=meta)
            _refresh_manifest(out)
    state.wait_for_everyone()
    manifest = _refresh_manifest(out) if state.is_main_process else None
    state.wait_for_everyone()
    return manifest or read_manifest(manifest_path)


def extract_features(
    export_dir: str | os.PathLike,
    list_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    videos_root: str | os.PathLike | None = None,
    batch_size: int = 8,
    shard_size: int | None = None,
    *,
    dtype: str = "float16",
    num_workers: int = 2,
) -> dict:
    """Extract the features of every clip of ``list_path`` into ``out_dir`` with ``export_dir``: a SeFAR export
    folder or a :class:`~bridge.frames.FrameEncoderConfig` (frame-wise image encoder).

    Resumable (finished shards are skipped) and split over the processes of ``accelerate launch`` (shard ``i``
    on rank ``i % world_size``, each on its own device). Unreadable clips are skipped and listed in the
    manifest. ``dtype``: float16 | bfloat16 | float32 of the stored tensors. ``shard_size``: clips per shard;
    None keeps the size of the cache being resumed, :data:`SHARD_SIZE` for a new one (a resumed cache refuses any
    other). Returns the final manifest.
    """
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # cpu=True: several CPU processes use gloo
    return _extract(
        state, export_dir, list_path, out_dir, videos_root, batch_size, shard_size, dtype, num_workers
    )
