"""Deterministic multi-view evaluation of a SeFAR encoder (a training run folder or an export folder).

Every clip is seen as T temporal views x S spatial crops: view ``v`` of T samples each of the K segments at
fraction ``(v + 0.5) / T`` (T = 1 is the segment centre); the frames are resized so that the short side is the
model's ``img_size`` and cut into S ``img_size`` squares spread along the long side
(:func:`encoder.augment.spatial_crops`). The clip's prediction is the mean softmax over the T*S views.

:func:`evaluate_run` writes into its output folder:

* ``results.json``: top-1/top-5/mean class accuracy, per-class, per-event and per-set accuracy (when
  FineGym-style categories are known) and the teacher-spread summary;
* ``predictions.jsonl``: per clip the label, prediction, its probability and the teacher's μ*/σ*;
* ``confusion.png``: the row-normalised confusion matrix;
* ``teacher_spread.png``: the paper's Fig. 4c analysis: with the head's dropout active, the teacher predicts each
  clip U times; the distribution of σ* (the std of the pseudo-label's probability over the passes) and of μ*
  (its mean) for clips whose pseudo-label is right vs wrong.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from encoder.data.dataset import ClipDataset, collate
from common.errors import ConfigError, DataError
from common.finegym import Category
from common.jsonio import dumps
from encoder.data.splits import Sample
from common.textio import write_text_atomic
from encoder.export import WEIGHTS_FILE, EvalTransform, FrozenEncoder, PreprocessConfig, is_export
from encoder.ssl import PseudoLabels, head_passes, pseudo_labels
from encoder.timesformer import TimeSformer

__all__ = [
    "direction_pair_accuracy",
    "direction_partners",
    "predict",
    "compute_metrics",
    "confusion_matrix",
    "spread_summary",
    "plot_confusion",
    "plot_teacher_spread",
    "format_results",
    "evaluate_run",
    "NonFiniteScores",
]


MAX_TICK_LABELS = 40  # confusion matrices with more classes get no tick labels


@dataclass
class ViewPredictions:
    """Outputs of :func:`predict_views` for N clips and C classes."""

    probs: Tensor  # (N, C) mean softmax over the T*S views, eval mode
    labels: Tensor  # (N,)
    pass_probs: Tensor | None  # (U, N, C) per dropout pass, mean softmax over the views; None when passes=0


def _as_timesformer(model: TimeSformer | FrozenEncoder) -> TimeSformer:
    return model.model if isinstance(model, FrozenEncoder) else model


def _as_preprocess(cfg) -> PreprocessConfig:
    return cfg if isinstance(cfg, PreprocessConfig) else PreprocessConfig.from_run_config(cfg)


def predict_views(
    model: TimeSformer | FrozenEncoder,
    items: Sequence[Sample],
    cfg,
    batch_size: int = 8,
    views: int = 1,
    crops: int = 1,
    device: str | torch.device = "cpu",
    passes: int = 0,
    num_workers: int = 0,
) -> ViewPredictions:
    """Multi-view predictions, plus ``passes`` dropout passes of the head per view when ``passes > 0``."""
    return predict_views_many({"model": model}, items, cfg, batch_size, views, crops, device, passes,
                              num_workers)["model"]


def predict_views_many(
    models: Mapping[str, TimeSformer | FrozenEncoder],
    items: Sequence[Sample],
    cfg,
    batch_size: int = 8,
    views: int = 1,
    crops: int = 1,
    device: str | torch.device = "cpu",
    passes: int = 0,
    num_workers: int = 0,
) -> dict[str, ViewPredictions]:
    """:func:`predict_views` of several models of one input layout (a run's student and teacher) in one pass over
    the clips: each clip is read and transformed once, then goes through every model. Same numbers as one
    :func:`predict_views` per model."""
    nets = {name: _as_timesformer(model) for name, model in models.items()}
    if not nets:
        raise ValueError("no model to evaluate")
    pp = _as_preprocess(cfg)
    if views < 1 or crops < 1:
        raise ConfigError(f"views={views}, crops={crops}: both must be >= 1")
    classes = {net.cfg.num_classes for net in nets.values()}
    if len(classes) != 1:
        raise ValueError(f"the models disagree on the number of classes: {sorted(classes)}")
    dataset = ClipDataset(
        items, pp.num_frames, EvalTransform(pp, crops), train=False, short_side=pp.short_side, temporal_views=views
    )
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    n, c = len(items), classes.pop()
    probs = {name: torch.zeros(n, c, dtype=torch.float64) for name in nets}
    pass_probs = {name: torch.zeros(passes, n, c, dtype=torch.float64) for name in nets} if passes else None
    was_training = {name: net.training for name, net in nets.items()}
    for net in nets.values():
        net.eval()
    try:
        for batch in tqdm(loader, desc="evaluate", unit="batch", leave=False):
            x = batch["clip"].to(device)  # (B, S, C, K, H, W)
            b, s = x.shape[:2]
            for name, net in nets.items():
                with torch.no_grad():
                    features = net.forward_features(x.flatten(0, 1))  # (B*S, E, D)
                    p = net.forward_head(features).float().softmax(-1).view(b, s, c).sum(1)  # (B, C)
                probs[name].index_add_(0, batch["index"], p.double().cpu())
                if pass_probs is not None:
                    u = head_passes(net, net.head, features, passes).float().softmax(-1)
                    u = u.view(passes, b, s, c).sum(2)  # (U, B, C)
                    pass_probs[name].index_add_(1, batch["index"], u.double().cpu())
    finally:
        for name, net in nets.items():
            net.train(was_training[name])
    scale = views * crops
    labels = torch.tensor([item.label for item in items], dtype=torch.long)
    return {name: ViewPredictions((probs[name] / scale).float(), labels,
                                  None if pass_probs is None else (pass_probs[name] / scale).float())
            for name in nets}


def predict(
    model: TimeSformer | FrozenEncoder,
    items: Sequence[Sample],
    cfg,
    batch_size: int = 8,
    views: int = 1,
    crops: int = 1,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """Class probabilities ``(N, C)`` (mean softmax over ``views`` x ``crops``) and labels ``(N,)`` of ``items``.

    ``cfg`` is a :class:`~encoder.config.RunConfig` or an export's :class:`PreprocessConfig`. The model must
    already be on ``device``; its train/eval mode is restored afterwards.
    """
    out = predict_views(model, items, cfg, batch_size, views, crops, device, 0, num_workers)
    return out.probs, out.labels


# ------------------------------------------------------------------------------------------------ metrics


def confusion_matrix(probs: Tensor, labels: Tensor) -> Tensor:
    """Counts ``(C, C)``: row = true class, column = predicted class."""
    c = probs.shape[1]
    pred = probs.argmax(1)
    return torch.bincount(labels * c + pred, minlength=c * c).view(c, c)  # (C_true, C_pred)


def direction_partners(
    elements: Sequence[int], pairs: Sequence[tuple[int, int]], mapping: dict[int, int] | None = None
) -> Tensor:
    """Per clip, the trained label of its time-reversed sibling class, or -1 where it has none: ``elements`` are
    the clips' element labels, ``pairs`` the (forward, backward) element classes (SynGym's manifest), ``mapping``
    element -> trained label for a coarser level (-1 also where the level merges the two siblings)."""
    sibling = {a: b for a, b in pairs} | {b: a for a, b in pairs}
    label = (lambda e: e) if mapping is None else mapping.__getitem__
    out = [label(sibling[e]) if e in sibling and label(sibling[e]) != label(e) else -1 for e in map(int, elements)]
    return torch.tensor(out, dtype=torch.long)


def direction_pair_accuracy(scores: Tensor, labels: Tensor, partners: Tensor) -> tuple[float | None, int]:
    """How often a clip's class scores strictly above its time-reversed sibling's (a tie counts as a loss), over
    the clips with a sibling (``partners >= 0``, see :func:`direction_partners`): ``(accuracy, clips)``, accuracy
    None when no clip has one. ``scores (N, C)``: logits or probabilities; ``labels``, ``partners``: ``(N,)``."""
    keep = partners >= 0
    n = int(keep.sum())
    if n == 0:
        return None, 0
    rows = keep.nonzero().flatten()
    wins = scores[rows, labels[rows]] > scores[rows, partners[rows]]
    return wins.float().mean().item(), n


class NonFiniteScores(ValueError):
    """Class scores hold NaN or infinity (a model with broken weights, or a broken input): no accuracy can be
    computed from them. ``clips`` are the indices of the affected rows."""

    def __init__(self, clips: list[int], total: int):
        self.clips, self.total = clips, total
        super().__init__(f"the model produced non-finite logits (NaN or infinity) for {len(clips)} of {total} clips")


def _check_inputs(probs: Tensor, labels: Tensor, class_names: Sequence[str]) -> None:
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"need probs (N, C) and labels (N,), got {tuple(probs.shape)} and {tuple(labels.shape)}")
    if probs.shape[1] != len(class_names):
        raise ValueError(f"{probs.shape[1]} classes in probs but {len(class_names)} class names")
    if len(labels) == 0:
        raise ValueError("no clips to evaluate")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in 0..{probs.shape[1] - 1}, found {labels.min()}..{labels.max()}")
    broken = (~torch.isfinite(probs)).any(1)  # (N,): argmax/topk of NaN rows give any answer (top-1 > top-5)
    if broken.any():
        raise NonFiniteScores(broken.nonzero().flatten().tolist(), len(labels))


def _group_accuracy(correct: Tensor, labels: Tensor, class_groups: Sequence[str]) -> dict[str, dict]:
    """Accuracy of the clips whose class belongs to each group (class ``i`` is in ``class_groups[i]``)."""
    group_of_clip = [class_groups[i] for i in labels.tolist()]
    out: dict[str, dict] = {}
    for group in sorted(set(group_of_clip)):
        mask = torch.tensor([g == group for g in group_of_clip])
        out[group] = {"count": int(mask.sum()), "accuracy": float(correct[mask].float().mean())}
    return out


def compute_metrics(
    probs: Tensor, labels: Tensor, class_names: Sequence[str], categories: Sequence[Category] | None = None
) -> dict:
    """Top-1, top-5, mean class accuracy and per-class accuracy (fractions in [0, 1]) of probabilities ``(N, C)``.

    Mean class accuracy averages over the classes that occur in ``labels``; classes without clips have accuracy
    ``None``. With FineGym-style ``categories`` (one per class, in label order) also per-event and per-set accuracy.
    Probabilities with NaN or infinity raise :class:`NonFiniteScores`.
    """
    _check_inputs(probs, labels, class_names)
    c = probs.shape[1]
    correct = probs.argmax(1) == labels  # (N,)
    top5 = (probs.topk(min(5, c), dim=1).indices == labels[:, None]).any(1)  # (N,)
    per_class = []
    for label, name in enumerate(class_names):
        mask = labels == label
        count = int(mask.sum())
        accuracy = float(correct[mask].float().mean()) if count else None
        per_class.append({"label": label, "name": name, "count": count, "accuracy": accuracy})
    present = [row["accuracy"] for row in per_class if row["accuracy"] is not None]
    metrics = {
        "num_clips": len(labels),
        "num_classes": c,
        "top1": float(correct.float().mean()),
        "top5": float(top5.float().mean()),
        "mean_class_accuracy": sum(present) / len(present),
        "per_class": per_class,
    }
    if categories is not None:
        if len(categories) != c:
            raise ValueError(f"{len(categories)} categories for {c} classes")
        metrics["per_event"] = _group_accuracy(correct, labels, [cat.event for cat in categories])
        metrics["per_set"] = _group_accuracy(correct, labels, [str(cat.set_id) for cat in categories])
    return metrics


def spread_summary(pseudo: PseudoLabels, labels: Tensor) -> dict:
    """Mean/median/quartiles of σ* and μ* for clips whose pseudo-label is right vs wrong."""
    correct = pseudo.target == labels
    out = {"pseudo_label_accuracy": float(correct.float().mean())}
    for name, mask in (("correct", correct), ("wrong", ~correct)):
        group = {"count": int(mask.sum())}
        for key, values in (("sigma", pseudo.spread[mask]), ("mu", pseudo.confidence[mask])):
            if len(values):
                q = torch.quantile(values.float(), torch.tensor([0.25, 0.5, 0.75]))
                group[key] = {
                    "mean": float(values.mean()), "q25": float(q[0]), "median": float(q[1]), "q75": float(q[2])
                }
        out[name] = group
    return out


# -------------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def plot_confusion(counts: Tensor, class_names: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """Row-normalised confusion matrix as a PNG; class-name ticks only up to ``MAX_TICK_LABELS`` classes."""
    plt = _pyplot()
    c = counts.shape[0]
    rates = counts.float() / counts.sum(1, keepdim=True).clamp_min(1)  # (C_true, C_pred), rows sum to 1 or 0
    side = 6.0 if c <= MAX_TICK_LABELS else 9.0
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if c <= MAX_TICK_LABELS:
        names = [n if len(n) <= 24 else n[:23] + "…" for n in class_names]
        fontsize = 8 if c <= 20 else 5
        ax.set_xticks(range(c), names, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(c), names, fontsize=fontsize)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel(f"predicted class ({c})")
    ax.set_ylabel(f"true class ({c})")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    path = Path(path)
    _save_figure(fig, path)
    plt.close(fig)
    return path


def plot_teacher_spread(pseudo: PseudoLabels, labels: Tensor, passes: int, path: str | os.PathLike) -> Path:
    """Histograms of σ* and μ* for right vs wrong pseudo-labels (paper Fig. 4c) as a PNG."""
    plt = _pyplot()
    correct = (pseudo.target == labels).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, values, name, upper in (
        (axes[0], pseudo.spread.numpy(), "σ* (std of the pseudo-label's probability)", None),
        (axes[1], pseudo.confidence.numpy(), "μ* (mean probability of the pseudo-label)", 1.0),
    ):
        top = upper if upper is not None else max(float(values.max()), 1e-6)
        bins = [top * i / 30 for i in range(31)]
        for mask, label, colour in ((correct, "correct", "tab:green"), (~correct, "wrong", "tab:red")):
            if mask.any():
                ax.hist(values[mask], bins=bins, alpha=0.6, color=colour, label=f"{label} ({int(mask.sum())})")
        ax.set_xlabel(name)
        ax.set_ylabel("clips")
        ax.legend()
    fig.suptitle(f"teacher predictions over U={passes} dropout passes")
    fig.tight_layout()
    path = Path(path)
    _save_figure(fig, path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------- run


@dataclass
class _Source:
    """What :func:`evaluate_run` needs, from a run folder or an export folder."""

    model: TimeSformer
    weights: Path  # the weights file (or run folder) the model came from, named when its outputs are broken
    preprocess: PreprocessConfig
    class_names: list[str]
    categories: list[Category] | None
    views: int
    crops: int
    items: list[Sample]


def _load_source(path: Path, list_path, videos_root, which: str, device) -> _Source:
    from encoder.data.cliplist import read_clip_list

    if is_export(path):
        from encoder.export import load

        encoder = load(path, device=device)
        if list_path is None:
            raise ConfigError(f"{path} is an export folder, which has no val list: pass a list (--list LIST)")
        items = read_clip_list(list_path, videos_root).samples
        evaluation = encoder.config.get("evaluation", {})
        return _Source(
            encoder.model, path / WEIGHTS_FILE, encoder.preprocess_config, encoder.class_names, encoder.categories,
            evaluation.get("temporal_views", 1), evaluation.get("spatial_crops", 1), items,
        )
    if not (path / "config.yaml").is_file():
        raise DataError(path, "neither a training run folder (config.yaml) nor an export folder (config.json)")
    from encoder.export import run_categories
    from encoder.run import build_eval_items, load_trained

    cfg, model, names = load_trained(path, which=which)
    if list_path is None:
        items = build_eval_items(cfg)
    else:
        root = videos_root if videos_root is not None else Path(cfg.data.root) / cfg.data.videos
        items = read_clip_list(list_path, root, cfg.data.video_suffix).samples
    return _Source(
        model.to(device), path, PreprocessConfig.from_run_config(cfg), names, run_categories(path),
        cfg.eval_temporal_views, cfg.eval_spatial_crops, items,
    )


def _check_labels(items: Sequence[Sample], num_classes: int, list_name: str) -> None:
    bad = [item for item in items if item.label >= num_classes]
    if bad:
        reason = f"label {bad[0].label} of {bad[0].path} is outside the model's {num_classes} classes"
        raise DataError(list_name, reason)


def _prediction_rows(items: Sequence[Sample], probs: Tensor, pseudo: PseudoLabels | None) -> str:
    conf, pred = probs.max(1)
    rows = []
    for i, item in enumerate(items):
        row = {"clip": item.path, "label": item.label, "pred": int(pred[i]), "prob": round(float(conf[i]), 6)}
        if pseudo is not None:
            row.update(
                pseudo_label=int(pseudo.target[i]),
                mu=round(float(pseudo.confidence[i]), 6),
                sigma=round(float(pseudo.spread[i]), 6),
            )
        rows.append(dumps(row))
    return "".join(row + "\n" for row in rows)


def format_results(results: dict) -> str:
    """A small text table of the headline numbers, per event and the teacher spread."""
    m = results["metrics"]
    lines = [
        f"{results['source']}  ({m['num_clips']} clips, {m['num_classes']} classes, "
        f"{results['views']} views x {results['crops']} crops)",
        f"  {'top-1':<22}{100 * m['top1']:7.2f}",
        f"  {'top-5':<22}{100 * m['top5']:7.2f}",
        f"  {'mean class accuracy':<22}{100 * m['mean_class_accuracy']:7.2f}",
    ]
    for event, row in m.get("per_event", {}).items():
        lines.append(f"  {'event ' + event:<22}{100 * row['accuracy']:7.2f}   ({row['count']} clips)")
    spread = results.get("teacher_spread")
    if spread:
        for group in ("correct", "wrong"):
            g = spread[group]
            if "sigma" in g:
                lines.append(
                    f"  σ* {group:<19}{g['sigma']['mean']:7.4f}   μ* {g['mu']['mean']:.4f}   ({g['count']} clips)"
                )
    return "\n".join(lines)


def evaluate_run(
    run_or_export: str | os.PathLike,
    out_dir: str | os.PathLike,
    list_path: str | os.PathLike | None = None,
    views: int | None = None,
    crops: int | None = None,
    passes: int = 10,
    *,
    which: str = "teacher",
    videos_root: str | os.PathLike | None = None,
    batch_size: int = 8,
    num_workers: int = 2,
    device: str | torch.device | None = None,
) -> dict:
    """Evaluate a run folder (its ``which`` model) or an export folder and write the reports into ``out_dir``.

    ``list_path``: a ``path label`` list (default: the run's val list; required for an export). Its paths are
    resolved against ``videos_root`` (default: the run's video folder, or the list's folder for an export).
    ``views``/``crops`` default to the run's (or export's) evaluation setting. ``passes``: U dropout passes for
    the teacher-spread analysis (0 skips it). Returns the content of ``results.json``.
    """
    if passes == 1 or passes < 0:
        raise ConfigError(f"passes={passes}: the spread over passes needs passes >= 2 (or 0 to skip it)")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path = Path(run_or_export)
    src = _load_source(path, list_path, videos_root, which, device)
    views, crops = views or src.views, crops or src.crops
    _check_labels(src.items, len(src.class_names), os.fspath(list_path or path))
    out = predict_views(src.model, src.items, src.preprocess, batch_size, views, crops, device, passes, num_workers)
    try:
        metrics = compute_metrics(out.probs, out.labels, src.class_names, src.categories)
    except NonFiniteScores as err:
        first = src.items[err.clips[0]].path
        raise DataError(src.weights, f"{err} (first: {first}); its weights are broken, nothing was written") from None
    pseudo = None if out.pass_probs is None else pseudo_labels(out.pass_probs.clamp_min(1e-30).log(), adaptive=False)
    results = {
        "source": os.fspath(path),
        "list": None if list_path is None else os.fspath(list_path),
        "views": views,
        "crops": crops,
        "metrics": metrics,
        "teacher_spread": None if pseudo is None else {"passes": passes, **spread_summary(pseudo, out.labels)},
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_confusion(confusion_matrix(out.probs, out.labels), src.class_names, out_dir / "confusion.png", path.name)
    if pseudo is not None:
        plot_teacher_spread(pseudo, out.labels, passes, out_dir / "teacher_spread.png")
    write_text_atomic(out_dir / "predictions.jsonl", _prediction_rows(src.items, out.probs, pseudo))
    write_text_atomic(out_dir / "results.json", dumps(results, indent=2) + "\n")
    print(format_results(results))
    return results
