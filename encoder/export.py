"""Frozen SeFAR encoder exports: a folder anyone can load without our training code.

An export folder holds two files:

* ``model.safetensors``: the :class:`~encoder.timesformer.TimeSformer` state dict (teacher or student);
* ``config.json``: everything needed to rebuild and feed the model::

    {"format": "sefar-encoder", "format_version": 1,
     "architecture": {...TimeSformerConfig.to_dict()...},
     "combo": "2-2-4", "num_frames": 8, "img_size": 224,
     "preprocess": {"num_frames": 8, "img_size": 224, "mean": [...], "std": [...], "short_side": null},
     "class_names": ["...", ...],
     "categories": [{"label": 0, "glabel": 0, "set_id": 1, "event": "VT", "name": "..."}, ...] | null,
     "evaluation": {"temporal_views": 1, "spatial_crops": 1},
     "which": "teacher",   # the run's model these weights are: the EMA teacher or the student
     "source": {"run": "<run folder name>", "which": "teacher"},
     "weights": {"file": "model.safetensors", "sha256": "<64 hex digits>", "bytes": int}}

``weights`` ties the config to its weights: loading checks the file's SHA-256 (after its keys and shapes), so
weights of another model copied over ``model.safetensors`` are refused. Exports written before it was recorded
still load, with a one-line notice that their weights cannot be verified.

Evaluation preprocessing (:func:`eval_views`, shared with :mod:`encoder.evaluate` and :mod:`bridge.features`):
take K = ``num_frames`` frames, one at the centre of each of K equal segments; resize the short side to
``short_side`` if set (the read-time resize of training), then to ``img_size``; crop ``img_size`` squares with
:func:`encoder.augment.spatial_crops`; scale to [0, 1] and normalise with ``mean``/``std``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from common.configfile import field_problems
from common.jsonio import dumps
from encoder.augment import normalize, resize_short_side, spatial_crops
from common.errors import ConfigError, DataError
from common.finegym import Category
from encoder.data.sampling import ElementLayout, segment_frame_indices
from common.textio import read_json_object, write_text_atomic
from encoder.data.video import resize_short_side as resize_frames_short_side
from encoder.timesformer import TimeSformer, TimeSformerConfig

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "PreprocessConfig",
    "FrozenEncoder",
    "eval_views",
    "EvalTransform",
    "export",
    "load",
    "is_export",
    "save_safetensors",
    "file_sha256",
    "weights_record",
    "check_weights_digest",
]


_log = logging.getLogger(__name__)

FORMAT = "sefar-encoder"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class PreprocessConfig:
    """How clips were fed to the model in evaluation: frame count, size, read-time resize and normalisation."""

    num_frames: int
    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    short_side: int | None = None  # read-time short-side resize of training, applied before the img_size resize

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict) -> "PreprocessConfig":
        return cls(
            num_frames=int(values["num_frames"]),
            img_size=int(values["img_size"]),
            mean=tuple(float(v) for v in values["mean"]),
            std=tuple(float(v) for v in values["std"]),
            short_side=None if values.get("short_side") is None else int(values["short_side"]),
        )

    @classmethod
    def from_run_config(cls, cfg) -> "PreprocessConfig":
        """From a :class:`encoder.config.RunConfig` (duck-typed, so this module needs no training code)."""
        return cls(
            num_frames=ElementLayout.from_combo(cfg.model.combo).num_frames,
            img_size=cfg.model.img_size,
            mean=tuple(cfg.aug.mean),
            std=tuple(cfg.aug.std),
            short_side=cfg.data.short_side,
        )


def eval_views(frames: Tensor, pp: PreprocessConfig, crops: int = 1, resized: bool = False) -> Tensor:
    """Sampled uint8 frames ``(K, C, H, W)`` -> ``crops`` normalised views ``(S, C, K, img, img)``.

    ``resized``: the frames were already resized to ``pp.short_side`` on reading (as
    :class:`~encoder.data.dataset.ClipDataset` does), so only the ``img_size`` resize is left.
    """
    if not resized and pp.short_side:
        frames = torch.from_numpy(resize_frames_short_side(frames.permute(0, 2, 3, 1).numpy(), pp.short_side))
        frames = frames.permute(0, 3, 1, 2)  # (K, H, W, C) -> (K, C, H, W)
    frames = resize_short_side(frames, pp.img_size)  # (K, C, H', W'), min(H', W') == img_size
    views = [normalize(view, pp.mean, pp.std) for view in spatial_crops(frames, crops, pp.img_size)]
    return torch.stack(views)  # (S, C, K, img, img)


class EvalTransform:
    """:class:`~encoder.data.dataset.ClipDataset` transform: frames read at ``pp.short_side`` -> ``{"clip":
    (S, C, K, img, img)}`` (deterministic; the generator is unused)."""

    def __init__(self, pp: PreprocessConfig, crops: int = 1) -> None:
        self.pp, self.crops = pp, crops

    def __call__(self, frames: Tensor, generator: torch.Generator) -> dict:
        return {"clip": eval_views(frames, self.pp, self.crops, resized=True)}


# ----------------------------------------------------------------------------------------- frozen encoder


class FrozenEncoder(nn.Module):
    """A loaded export: frozen TimeSformer + the preprocessing and class names it was trained with.

    Always in eval mode with ``requires_grad`` False; :meth:`train` is a no-op, so a parent module's
    ``.train()`` cannot switch on its dropout or drop path.
    """

    def __init__(self, model: TimeSformer, config: dict) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.class_names: list[str] = list(config["class_names"])
        self.categories: list[Category] | None = (
            None if config.get("categories") is None else [Category(**c) for c in config["categories"]]
        )
        self.preprocess_config = PreprocessConfig.from_dict(config["preprocess"])
        self.layout = model.layout
        self.which: str | None = config.get("which", config.get("source", {}).get("which"))  # teacher | student
        super().train(False)
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> "FrozenEncoder":
        return self

    @property
    def device(self) -> torch.device:
        return self.model.cls_token.device

    def forward(self, x: Tensor) -> Tensor:
        """Clip ``(B, C, K, H, W)`` -> class logits ``(B, num_classes)``."""
        return self.model(x)

    def features(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """Token features of a clip ``(B, C, K, H, W)`` for the LLM bridge.

        Returns a dict with (E elements of lengths L_i from the combo, N = (H / patch)² patches, D = embed_dim,
        F = fusion_dim):

        * ``element_tokens``: list of E tensors ``(B, L_i, N, D)``, each element's per-frame patch tokens after
          the final norm (fine elements first, the context element last);
        * ``element_cls``: ``(B, E, D)``, each element's CLS token;
        * ``fused``: ``(B, F)``, the fusion head's feature before the classifier.
        """
        return self.model.forward_tokens(x)

    def preprocess(self, frames: np.ndarray | Tensor | Sequence[np.ndarray | Tensor]) -> Tensor:
        """Decoded RGB uint8 frames ``(T, H, W, C)`` (one clip) or a list of such clips -> ``(B, C, K, img, img)``.

        Samples K frames at the segment centres (evaluation sampling; clips shorter than K repeat frames), then
        resizes, centre-crops and normalises exactly as evaluation in training did. Returned on :attr:`device`.
        """
        clips = [frames] if _is_single_clip(frames) else list(frames)
        if not clips:
            raise ValueError("preprocess needs at least one clip")
        out = []
        for clip in clips:
            clip = torch.as_tensor(clip).cpu()
            if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != torch.uint8:
                raise ValueError(f"expected uint8 RGB frames (T, H, W, 3), got {clip.dtype} {tuple(clip.shape)}")
            idx = segment_frame_indices(clip.shape[0], self.preprocess_config.num_frames, train=False)
            sampled = clip[torch.from_numpy(idx)].permute(0, 3, 1, 2)  # (K, C, H, W)
            out.append(eval_views(sampled, self.preprocess_config)[0])  # (C, K, img, img)
        return torch.stack(out).to(self.device)  # (B, C, K, img, img)


def _is_single_clip(frames: object) -> bool:
    return isinstance(frames, (np.ndarray, Tensor)) and frames.ndim == 4


# --------------------------------------------------------------------------------------------- writing


def save_safetensors(
    path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> str:
    """Write ``tensors`` to ``path`` through a temporary file in the same folder and ``os.replace``; returns the
    SHA-256 (hex) of the bytes written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, os.fspath(tmp), metadata=metadata)
        digest = file_sha256(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def weights_record(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> dict:
    """Save ``tensors`` to ``path`` (:func:`save_safetensors`) and return the record that ties a config to them:
    ``{"file": name, "sha256": hex digest, "bytes": size}`` (encoder and adapter exports write it in config.json)."""
    digest = save_safetensors(path, tensors, metadata=metadata)
    return {"file": path.name, "sha256": digest, "bytes": path.stat().st_size}


def check_weights_digest(weights: Path, sha256: str | None, config: str = CONFIG_FILE) -> None:
    """Check ``weights`` against the SHA-256 its ``config`` (a file beside it) records: another digest is a
    :class:`DataError` naming the weights; ``None`` (an export from before digests) loads with a one-line notice."""
    if sha256 is None:
        _log.warning("note: %s records no weights digest (an export from before digests): %s is not verified",
                     weights.with_name(config), weights.name)
    elif (actual := file_sha256(weights)) != sha256:
        raise DataError(weights, f"does not match {config}: its SHA-256 is {actual[:16]}... but {config} "
                                 f"records {sha256[:16]}... (weights of another model copied over this export?)")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _category_dicts(categories: Sequence[Category] | None, num_classes: int, source: str) -> list[dict] | None:
    if categories is None:
        return None
    if len(categories) != num_classes:
        raise DataError(source, f"{len(categories)} categories for a model with {num_classes} classes")
    return [asdict(c) for c in categories]


def build_export_config(
    arch: TimeSformerConfig,
    pp: PreprocessConfig,
    class_names: Sequence[str],
    categories: Sequence[Category] | None = None,
    *,
    temporal_views: int = 1,
    spatial_crops: int = 1,
    source: dict | None = None,
    which: str | None = None,
) -> dict:
    """The ``config.json`` of an export (layout in the module docstring)."""
    if len(class_names) != arch.num_classes:
        raise ConfigError(f"{len(class_names)} class names for a model with {arch.num_classes} classes")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": arch.to_dict(),
        "combo": arch.combo,
        "num_frames": pp.num_frames,
        "img_size": pp.img_size,
        "preprocess": pp.to_dict(),
        "class_names": list(class_names),
        "categories": _category_dicts(categories, arch.num_classes, "categories"),
        "evaluation": {"temporal_views": temporal_views, "spatial_crops": spatial_crops},
        "which": which,
        "source": source or {},
    }


def save_export(out_dir: str | os.PathLike, model: TimeSformer, config: dict) -> Path:
    """Write ``model.safetensors`` then ``config.json`` with the weights' SHA-256 (each atomically; the config,
    written last, marks the export complete, and an interrupted rewrite leaves weights that its config refuses)."""
    out = Path(out_dir)
    weights = weights_record(out / WEIGHTS_FILE, model.state_dict(), metadata={"format": FORMAT})
    write_text_atomic(out / CONFIG_FILE, dumps({**config, "weights": weights}, indent=2) + "\n")
    return out


def export(run_dir: str | os.PathLike, out_dir: str | os.PathLike, which: str = "teacher") -> Path:
    """Export the final ``which`` (teacher | student) model of a training run folder to ``out_dir``."""
    from encoder.run import load_trained

    if which not in ("teacher", "student"):
        raise ConfigError(f"which={which!r}: use teacher or student")
    cfg, model, class_names = load_trained(run_dir, which=which)
    categories = run_categories(run_dir)
    config = build_export_config(
        model.cfg,
        PreprocessConfig.from_run_config(cfg),
        class_names,
        categories,
        temporal_views=cfg.eval_temporal_views,
        spatial_crops=cfg.eval_spatial_crops,
        source={"run": Path(run_dir).resolve().name, "which": which},
        which=which,
    )
    return save_export(out_dir, model, config)


def run_categories(run_dir: str | os.PathLike) -> list[Category] | None:
    """The FineGym-style categories named by ``RUN/classes.json`` (relative paths: cwd, then the run folder)."""
    from common.finegym import read_categories

    classes_path = Path(run_dir) / "classes.json"
    info = read_json_object(classes_path)
    rel = info.get("categories")
    if rel is None:
        return None
    path = Path(rel)
    if not path.is_absolute() and not path.is_file():
        path = Path(run_dir) / rel
    if not path.is_file():
        raise DataError(classes_path, f"categories file {rel!r} does not exist")
    return read_categories(path)


# --------------------------------------------------------------------------------------------- loading


def is_export(path: str | os.PathLike) -> bool:
    """True for a folder that looks like an export (has ``config.json`` and no run ``config.yaml``)."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and not (path / "config.yaml").is_file()


def read_export_config(path: str | os.PathLike) -> dict:
    """Read and check an export's ``config.json``; errors name the file."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(folder, "no such export folder")
    config_path = folder / CONFIG_FILE
    config = read_json_object(config_path)
    if config.get("format") != FORMAT:
        raise DataError(config_path, f"not a SeFAR encoder export (format={config.get('format')!r})")
    if type(config.get("format_version", 0)) is not int:
        raise DataError(config_path, f"format_version {config['format_version']!r} is not an integer")
    if config.get("format_version", 0) > FORMAT_VERSION:
        reason = f"format_version {config['format_version']} is newer than this code ({FORMAT_VERSION})"
        raise DataError(config_path, reason)
    missing = [k for k in ("architecture", "preprocess", "class_names") if k not in config]
    if missing:
        raise DataError(config_path, f"missing keys {missing}")
    problems = _config_problems(config)
    if problems:
        raise DataError(config_path, "; ".join(problems))
    return config


# Sizes far above any real model (ViT-g: 40 blocks of 1,408), so that a damaged config.json cannot make loading
# allocate without bound before the weights are compared with it.
_ARCHITECTURE_LIMITS = {"num_classes": 100_000, "img_size": 4096, "patch_size": 1024, "in_chans": 64,
                        "embed_dim": 16_384, "depth": 1024, "num_heads": 1024, "mlp_ratio": 64, "fusion_dim": 65_536}
_PREPROCESS_LIMITS = {"num_frames": 4096, "img_size": 4096, "short_side": 16_384}


def _config_problems(config: dict) -> list[str]:
    """Type and size problems of the parts of an export's ``config.json`` that loading builds objects from."""
    problems = []
    for key, schema, limits in (("architecture", TimeSformerConfig, _ARCHITECTURE_LIMITS),
                                ("preprocess", PreprocessConfig, _PREPROCESS_LIMITS)):
        part = config[key]
        if not isinstance(part, dict):
            problems.append(f"{key} must be an object")
        else:
            problems += [f"{key}.{p}" for p in field_problems(schema, part, limits=limits)]
    weights = config.get("weights")
    if weights is not None and not (isinstance(weights, dict) and weights.get("file") == WEIGHTS_FILE
                                    and isinstance(weights.get("sha256"), str)
                                    and re.fullmatch(r"[0-9a-f]{64}", weights["sha256"])):
        problems.append(f"weights must be {{'file': '{WEIGHTS_FILE}', 'sha256': <64 hex digits>, ...}}")
    names = config["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append("class_names must be a list of strings")
    categories = config.get("categories")
    if categories is not None:
        if not isinstance(categories, list) or not all(isinstance(c, dict) for c in categories):
            problems.append("categories must be null or a list of objects")
        else:
            expected = {f.name for f in fields(Category)}
            for i, c in enumerate(categories):
                if set(c) != expected:
                    problems.append(f"categories[{i}] must have exactly the keys {', '.join(sorted(expected))}")
                else:
                    problems += [f"categories[{i}].{p}" for p in field_problems(Category, c)]
    return problems


def _load_state(weights: Path, model: TimeSformer, sha256: str | None = None) -> None:
    """Strictly load ``weights`` into ``model``; every problem becomes one :class:`DataError` naming the file.

    ``sha256``: the digest ``config.json`` records (checked after keys and shapes); ``None`` for an export
    written before digests were recorded (loaded with a notice).
    """
    if not weights.is_file():
        raise DataError(weights, "missing")
    try:
        state = load_file(os.fspath(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise DataError(weights, f"not a readable safetensors file ({' '.join(str(err).split())})") from None
    own = model.state_dict()
    problems = []
    if missing := [k for k in own if k not in state]:
        problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected := [k for k in state if k not in own]:
        problems.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    shapes = [
        f"{k}: file {tuple(v.shape)} vs config {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:5]))
    if problems:
        raise DataError(weights, "does not match config.json: " + "; ".join(problems))
    check_weights_digest(weights, sha256)
    model.load_state_dict(state, strict=True)


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> FrozenEncoder:
    """Load an export folder as a :class:`FrozenEncoder` on ``device``.

    Raises :class:`DataError` naming ``config.json`` or ``model.safetensors`` when either is missing, corrupt or
    the two do not match.
    """
    folder = Path(path)
    config = read_export_config(folder)
    try:
        arch = TimeSformerConfig.from_dict(config["architecture"])
        PreprocessConfig.from_dict(config["preprocess"])
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise DataError(folder / CONFIG_FILE, f"invalid architecture/preprocess: {err}") from None
    if len(config["class_names"]) != arch.num_classes:
        reason = f"{len(config['class_names'])} class names for {arch.num_classes} classes"
        raise DataError(folder / CONFIG_FILE, reason)
    model = TimeSformer(arch)
    _load_state(folder / WEIGHTS_FILE, model, (config.get("weights") or {}).get("sha256"))
    return FrozenEncoder(model, config).to(device)
