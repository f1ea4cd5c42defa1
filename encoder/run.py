"""A training run folder, read without the training recipe: its clips, classes, model and trained weights.

The recipe (:mod:`encoder.train`) writes a run folder; evaluation, export and the feature cache read it through
this module, so none of them imports the recipe (it is a leaf that only drivers import)::

    RUN/config.yaml        resolved config          RUN/classes.json   class names (+ categories file)
    RUN/split/             labeled/unlabeled lists   RUN/metrics.jsonl  one line per logged step
    RUN/checkpoints/step_0000100/ {student,teacher,optimizer}.safetensors, state.json
    RUN/final/             {student,teacher}.safetensors, results.json, val_predictions_{student,teacher}.safetensors
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from common.devices import resolve_auto_dtype
from common.errors import ConfigError, DataError
from common.jsonio import read_json_object
from encoder.config import RunConfig, load_config
from encoder.data.sampling import ElementLayout
from encoder.data.splits import Sample, make_split, read_samples, resolve_paths
from encoder.timesformer import TimeSformer, create_model

__all__ = [
    "WHICH",
    "build_train_items",
    "build_eval_items",
    "class_names",
    "build_model",
    "load_strict",
    "unwrap",
    "latest_checkpoint",
    "load_trained",
]

WHICH = ("teacher", "student")
_ARCH_OVERRIDES = ("patch_size", "embed_dim", "depth", "num_heads", "stem")


# ------------------------------------------------------------------------------------------------ data


def _resolve(samples: list[Sample], cfg: RunConfig) -> list[Sample]:
    """List entries → video paths under ``data.root/data.videos``; bare clip ids get ``data.video_suffix``."""
    out = []
    for s in resolve_paths(samples, Path(cfg.data.root) / cfg.data.videos):
        path = s.path
        if not Path(path).suffix and not Path(path).is_dir():
            path += cfg.data.video_suffix
        out.append(Sample(path, s.label, s.start, s.end))
    return out


def build_train_items(cfg: RunConfig) -> tuple[list[Sample], list[Sample]]:
    """(labeled, unlabeled) clips: the given labeled list, or a seeded split of the train list."""
    train = read_samples(cfg.data_path(cfg.data.train_list))
    if cfg.data.labeled_list:
        labeled = read_samples(cfg.data_path(cfg.data.labeled_list))
        names = {Path(s.path).stem for s in labeled}
        unlabeled = [s for s in train if Path(s.path).stem not in names]
    elif cfg.data.label_ratio == 1.0:  # every train clip labeled: the supervised ceiling
        labeled, unlabeled = train, []
    else:
        split = make_split(train, cfg.data.label_ratio, cfg.data.split_seed, cfg.data.split_method)
        labeled, unlabeled = split.labeled, split.unlabeled
    return _resolve(labeled, cfg), _resolve(unlabeled, cfg)


def build_eval_items(cfg: RunConfig) -> list[Sample]:
    """The validation clips of the run's config."""
    return _resolve(read_samples(cfg.data_path(cfg.data.val_list)), cfg)


def class_names(cfg: RunConfig, items: list[Sample]) -> list[str]:
    """Names from the FineGym-style categories file when given, else the label numbers."""
    if cfg.data.categories:
        from common.finegym import read_categories

        return [c.name for c in read_categories(cfg.data_path(cfg.data.categories))]
    return [str(i) for i in range(max(s.label for s in items) + 1)]


# ----------------------------------------------------------------------------------------------- model


def build_model(
    cfg: RunConfig, num_classes: int, pretrained: bool = True, layout: ElementLayout | None = None
) -> TimeSformer:
    """The run's TimeSformer.

    ``pretrained=False`` skips reading ``model.pretrained`` and ``model.stem_weights`` (for models whose weights
    are loaded next). ``layout``: the run's already parsed element layout (parsed from ``model.combo`` if None).
    """
    m = cfg.model
    return create_model(
        m.name,
        num_classes,
        combo=m.combo,
        layout=layout,
        img_size=m.img_size,
        pretrained=m.pretrained if pretrained else None,
        stem_weights=m.stem_weights if pretrained else None,
        drop_path_rate=m.drop_path_rate,
        head_dropout=m.head_dropout,
        freeze_stem=m.freeze_stem,
        stem_dtype=getattr(torch, resolve_auto_dtype(m.stem_dtype, "model.stem_dtype")),
        **{k: v for k in _ARCH_OVERRIDES if (v := getattr(m, k)) is not None},
    )


def load_strict(model: nn.Module, file: Path) -> None:
    """Load a safetensors state dict into ``model``; any missing or unexpected key is a :class:`DataError`."""
    try:
        state = load_file(file)
    except (OSError, SafetensorError) as err:
        raise DataError(file, f"unreadable weights: {' '.join(str(err).split())[:200]}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(file, f"does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP/Accelerate wrapper (the model itself when unwrapped)."""
    return model.module if hasattr(model, "module") else model


# ------------------------------------------------------------------------------------------ run folder


def latest_checkpoint(run: Path) -> Path | None:
    """``RUN/checkpoints/step_XXXXXXX`` named by ``latest.json``, or None before the first checkpoint."""
    pointer = run / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    name = read_json_object(pointer).get("checkpoint")
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise DataError(pointer, f"'checkpoint' must name a folder in {run / 'checkpoints'}, got {name!r}")
    return run / "checkpoints" / name


def load_trained(run_dir: str | os.PathLike, which: str = "teacher") -> tuple[RunConfig, TimeSformer, list[str]]:
    """The config, the trained ``which`` model (final weights, else the latest checkpoint's) and class names."""
    run = Path(run_dir)
    if which not in WHICH:
        raise ConfigError(f"which={which!r}: use teacher or student")
    cfg = load_config(run / "config.yaml")
    classes = run / "classes.json"
    if not classes.is_file():
        raise DataError(classes, "missing: not a training run folder")
    names = read_json_object(classes).get("class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(classes, "'class_names' must be a list of strings")
    weights = run / "final" / f"{which}.safetensors"
    if not weights.is_file():
        ckpt = latest_checkpoint(run)
        if ckpt is None:
            raise DataError(weights, "missing, and the run has no checkpoint")
        weights = ckpt / f"{which}.safetensors"
    model = build_model(cfg, len(names), pretrained=False)
    load_strict(model, weights)
    return cfg, model.eval(), names
