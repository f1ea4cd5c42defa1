"""The encoder training recipe: supervised-only, FixMatch-threshold or SeFAR, in one readable loop.

    sefar encoder train configs/encoder/syngym_tiny.yaml ssl.mode=sefar optim.lr=0.01

Validate config → set up data, model, teacher, optimizer → loop: one optimizer step per global batch
(gradient accumulation over micro-batches), EMA update of the teacher, JSONL metrics, a checkpoint every
``save_every`` steps and on SIGINT/SIGTERM → final evaluation and weights in ``RUN/final/``.

Runs through Hugging Face Accelerate: ``accelerate launch -m sefar encoder train CFG`` (or ``torchrun``) scales
it over GPUs and nodes; on one CPU the same code runs as is. Resuming restores model, teacher, optimizer, RNG
states and the position in the data stream, so on CPU the losses after a resume equal those of an
uninterrupted run.

Run folder::

    RUN/config.yaml        resolved config          RUN/classes.json   class names (+ categories file)
    RUN/split/             labeled/unlabeled lists   RUN/metrics.jsonl  one line per logged step
    RUN/checkpoints/step_0000100/ {student,teacher,optimizer}.safetensors, state.json
    RUN/final/             {student,teacher}.safetensors, results.json, val_predictions.safetensors
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from encoder import augment
from encoder.config import RunConfig, load_config
from encoder.data.dataset import ClipDataset, EpochBatchSampler, collate
from common.errors import ConfigError, DataError
from encoder.data.sampling import ElementLayout
from encoder.data.splits import Sample, Split, make_split, read_samples, resolve_paths, write_split
from common.textio import write_text_atomic
from encoder.ssl import (
    ema_decay_at,
    ema_update,
    pseudo_labels,
    soft_cross_entropy,
    teacher_passes,
    tube_mix,
    tube_mix_box,
    warmup_factor,
)
from encoder.timesformer import TimeSformer, create_model

log = logging.getLogger(__name__)


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
    else:
        split = make_split(train, cfg.data.label_ratio, cfg.data.split_seed, cfg.data.split_method)
        labeled, unlabeled = split.labeled, split.unlabeled
    return _resolve(labeled, cfg), _resolve(unlabeled, cfg)


def build_eval_items(cfg: RunConfig) -> list[Sample]:
    return _resolve(read_samples(cfg.data_path(cfg.data.val_list)), cfg)


def class_names(cfg: RunConfig, items: list[Sample]) -> list[str]:
    """Names from the FineGym-style categories file when given, else the label numbers."""
    if cfg.data.categories:
        from common.finegym import read_categories

        return [c.name for c in read_categories(cfg.data_path(cfg.data.categories))]
    return [str(i) for i in range(max(s.label for s in items) + 1)]


class LabeledTransform:
    """Weak view of a labeled clip: ``{"video": (C, K, H, W)}``."""

    def __init__(self, cfg: RunConfig):
        size = cfg.model.img_size
        lo, hi = (round(size * f) for f in cfg.aug.scale_jitter)
        self.weak = augment.weak_transform(size, (lo, hi), flip=cfg.aug.flip)
        self.mean, self.std = cfg.aug.mean, cfg.aug.std

    def __call__(self, frames: torch.Tensor, generator: torch.Generator) -> dict:
        return {"video": augment.normalize(self.weak(frames), self.mean, self.std)}


class UnlabeledTransform(LabeledTransform):
    """Weak view (teacher) and strong view (student) of the same frames and crop.

    Strong = RandAugment on the weak crop, identical on all frames, then the temporal perturbation
    (``mod-perturb`` reverses the time order inside each fine element).
    """

    def __init__(self, cfg: RunConfig, layout: ElementLayout):
        super().__init__(cfg)
        self.strong = augment.strong_spatial_transform(cfg.aug.randaug_ops, cfg.aug.randaug_magnitude)
        self.temporal = augment.temporal_perturbation(cfg.aug.temporal)
        self.layout = layout

    def __call__(self, frames: torch.Tensor, generator: torch.Generator) -> dict:
        weak = self.weak(frames)  # (K, C, H, W) uint8
        strong = self.strong(weak)[self.temporal(self.layout, generator)]  # (K, C, H, W), time re-ordered
        return {
            "weak": augment.normalize(weak, self.mean, self.std),
            "strong": augment.normalize(strong, self.mean, self.std),
        }


def _loader(dataset: ClipDataset, sampler: EpochBatchSampler, workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(0),  # never draw from the global RNG (exact resume)
        persistent_workers=workers > 0,
    )


# ----------------------------------------------------------------------------------------------- model


def build_model(cfg: RunConfig, num_classes: int, pretrained: bool = True) -> TimeSformer:
    """The run's TimeSformer; ``pretrained=False`` skips reading ``model.pretrained`` (weights loaded later)."""
    return create_model(
        cfg.model.name,
        num_classes,
        combo=cfg.model.combo,
        img_size=cfg.model.img_size,
        pretrained=cfg.model.pretrained if pretrained else None,
        drop_path_rate=cfg.model.drop_path_rate,
        head_dropout=cfg.model.head_dropout,
        **{k: v for k in ("patch_size", "embed_dim", "depth", "num_heads", "stem") if (v := getattr(cfg.model, k)) is not None},
    )


def build_optimizer(cfg: RunConfig, model: TimeSformer) -> torch.optim.Optimizer:
    """SGD (nesterov) or AdamW, with weight decay on weight matrices only (not norms, biases, embeddings)."""
    skip = model.no_weight_decay()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name in skip or name.split(".")[0] in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    o = cfg.optim
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=(o.momentum, 0.999))
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)


def learning_rate(cfg: RunConfig, step: int, steps_per_epoch: int) -> float:
    """Step decay ×lr_gamma at each milestone epoch, after an optional linear warm-up."""
    o = cfg.optim
    epoch = step / steps_per_epoch
    lr = o.lr * o.lr_gamma ** sum(epoch >= m for m in o.milestones)
    if o.warmup_steps and step < o.warmup_steps:
        lr *= (step + 1) / o.warmup_steps
    return lr


# ------------------------------------------------------------------------------------------------ loss


@dataclass
class StepLosses:
    """Every term of one micro-batch's loss (LAVIS-style named output)."""

    total: torch.Tensor
    supervised: torch.Tensor
    unlabeled: torch.Tensor
    mix: torch.Tensor
    xi: float
    mean_weight: float  # mean η (or threshold mask rate)
    pseudo_accuracy: float  # pseudo-labels vs the hidden labels of unlabeled clips (diagnostic only)


def compute_losses(
    cfg: RunConfig, student, teacher: TimeSformer, labeled: dict, unlabeled: dict | None, xi: float
) -> StepLosses:
    """L = L_sup + ξ(γ1 L_un + γ2 L_mix) for one micro-batch; the student sees all its inputs in one forward."""
    zero = torch.zeros((), device=labeled["video"].device)
    if unlabeled is None:
        sup = F.cross_entropy(student(labeled["video"]).float(), labeled["label"])
        return StepLosses(sup, sup, zero, zero, 0.0, 0.0, float("nan"))

    s = cfg.ssl
    if s.mode == "fixmatch":  # pseudo-labels from the student itself, one deterministic pass
        model = _unwrap(student)
        logits_u = teacher_passes(model, model.head, unlabeled["weak"], passes=1)
        pl = pseudo_labels(logits_u, adaptive=False, threshold=s.threshold)
    else:
        logits_u = teacher_passes(teacher, teacher.head, unlabeled["weak"], passes=s.passes if s.adaptive else 1)
        pl = pseudo_labels(logits_u, adaptive=s.adaptive, threshold=s.threshold, beta=s.beta, eps=s.eps)

    inputs = [labeled["video"], unlabeled["strong"]]
    use_mix = s.mode == "sefar" and s.mix and unlabeled["strong"].shape[0] > 1
    if use_mix:
        lam = float(torch.distributions.Beta(s.mix_alpha, s.mix_alpha).sample())
        h, w = unlabeled["strong"].shape[-2:]
        rows, cols, lam = tube_mix_box(h, w, lam, student_patch(student))
        partner = torch.randperm(unlabeled["strong"].shape[0]).to(unlabeled["strong"].device)
        inputs.append(tube_mix(unlabeled["strong"], partner, rows, cols))
    logits = student(torch.cat(inputs)).float()  # (B_l + B_u [+ B_u], classes)
    b_l, b_u = labeled["video"].shape[0], unlabeled["strong"].shape[0]

    sup = F.cross_entropy(logits[:b_l], labeled["label"])
    un = (pl.weight * F.cross_entropy(logits[b_l : b_l + b_u], pl.target, reduction="none")).mean()
    mix = zero
    if use_mix:
        target = lam * pl.probs + (1 - lam) * pl.probs[partner]  # (B_u, classes)
        weight = lam * pl.weight + (1 - lam) * pl.weight[partner]  # η'
        mix = (weight * soft_cross_entropy(logits[b_l + b_u :], target)).mean()
    total = sup + xi * (s.gamma1 * un + s.gamma2 * mix)
    accuracy = (pl.target == unlabeled["label"]).float().mean().item() if (unlabeled["label"] >= 0).all() else math.nan
    return StepLosses(total, sup, un, mix, xi, pl.weight.mean().item(), accuracy)


def student_patch(student) -> int:
    return _unwrap(student).cfg.patch_size


# ---------------------------------------------------------------------------------------- checkpoints


def _atomic_json(path: Path, value) -> None:
    write_text_atomic(path, json.dumps(value, indent=2) + "\n")


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as flat tensors (safetensors) + its JSON-able rest, so nothing is pickled."""
    state = opt.state_dict()
    tensors, plain = {}, {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value.contiguous()
            else:
                plain[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for flat, value in [*tensors.items(), *meta["plain"].items()]:
        pid, key = flat.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run: Path, step: int, student, teacher, opt, consumed: dict, keep: int) -> Path:
    """Write ``checkpoints/step_XXXXXXX`` into a temp folder, then rename it: never half-written."""
    root = run / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_unwrap(student).state_dict(), tmp / "student.safetensors")
    save_file(teacher.state_dict(), tmp / "teacher.safetensors")
    tensors, meta = _optimizer_tensors(opt)
    save_file({**tensors, "rng.torch": torch.get_rng_state()}, tmp / "optimizer.safetensors")
    py_state = random.getstate()
    np_state = np.random.get_state()
    meta.update(
        step=step,
        consumed=consumed,
        rng_python=[py_state[0], list(py_state[1]), py_state[2]],
        rng_numpy=[np_state[0], np_state[1].tolist(), *np_state[2:]],
    )
    _atomic_json(tmp / "state.json", meta)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_json(root / "latest.json", {"checkpoint": final.name, "step": step})
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old)
    return final


def load_checkpoint(path: Path, student, teacher, opt) -> dict:
    """Restore weights, optimizer and RNG states; returns ``state.json``."""
    for name in ("student.safetensors", "teacher.safetensors", "optimizer.safetensors", "state.json"):
        if not (path / name).is_file():
            raise DataError(path / name, "missing: checkpoint is incomplete")
    try:
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
        _load_strict(_unwrap(student), path / "student.safetensors")
        _load_strict(teacher, path / "teacher.safetensors")
        tensors = load_file(path / "optimizer.safetensors")
    except (json.JSONDecodeError, OSError, RuntimeError, SafetensorError) as err:
        raise DataError(path, f"unreadable checkpoint: {' '.join(str(err).split())[:200]}") from None
    torch.set_rng_state(tensors.pop("rng.torch"))
    _load_optimizer(opt, tensors, meta)
    v, state, pos = meta["rng_python"]
    random.setstate((v, tuple(state), pos))
    kind, keys, *rest = meta["rng_numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    return meta


def _load_strict(model: torch.nn.Module, file: Path) -> None:
    try:
        state = load_file(file)
    except (OSError, SafetensorError) as err:
        raise DataError(file, f"unreadable weights: {' '.join(str(err).split())[:200]}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(file, f"does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def latest_checkpoint(run: Path) -> Path | None:
    pointer = run / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    return run / "checkpoints" / json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]


# ------------------------------------------------------------------------------------------------ run


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked after each step (then checkpoint and stop)."""

    def __init__(self) -> None:
        self.raised: int | None = None
        self._old: dict = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.raised = signum
        log.warning("signal %d: saving a checkpoint after this step", signum)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _write_run_files(run: Path, cfg: RunConfig, names: list[str], labeled, unlabeled) -> None:
    run.mkdir(parents=True, exist_ok=True)
    tmp = run / "config.yaml.tmp"
    OmegaConf.save(OmegaConf.create(cfg.to_dict()), tmp)
    os.replace(tmp, run / "config.yaml")
    categories = str(cfg.data_path(cfg.data.categories)) if cfg.data.categories else None
    _atomic_json(run / "classes.json", {"class_names": names, "categories": categories})
    write_split(run / "split", Split(labeled, unlabeled), ratio=cfg.data.label_ratio, seed=cfg.data.split_seed,
                method=cfg.data.split_method)


def train(cfg: RunConfig, resume: bool = True) -> dict:
    """Train one run into ``cfg.out``; returns the final validation metrics (and run facts)."""
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    world, rank = accelerator.num_processes, accelerator.process_index
    o, s = cfg.optim, cfg.ssl
    micro = o.micro_batch_size
    if o.batch_size % (micro * world):
        raise ConfigError(f"optim.batch_size={o.batch_size} is not a multiple of micro_batch_size × processes")
    accum = o.batch_size // (micro * world)
    run = Path(cfg.out)

    _seed_everything(cfg.seed)
    layout = ElementLayout.from_combo(cfg.model.combo)
    labeled_items, unlabeled_items = build_train_items(cfg)
    names = class_names(cfg, labeled_items + unlabeled_items)
    if accelerator.is_main_process:
        _write_run_files(run, cfg, names, labeled_items, unlabeled_items)
    ssl = s.mode != "supervised"
    if ssl and not unlabeled_items:
        raise ConfigError("no unlabeled clips: use ssl.mode=supervised or a smaller data.label_ratio")

    model = build_model(cfg, len(names))
    teacher = copy.deepcopy(model).requires_grad_(False)
    opt = build_optimizer(cfg, model)

    # data streams: one labeled micro-batch (and μ× unlabeled) per forward
    lab_ds = ClipDataset(labeled_items, layout.num_frames, LabeledTransform(cfg), train=True,
                         seed=cfg.seed, short_side=cfg.data.short_side)
    lab_sampler = EpochBatchSampler(len(lab_ds), micro, seed=cfg.seed, rank=rank, world_size=world)
    if ssl:
        unl_ds = ClipDataset(unlabeled_items, layout.num_frames, UnlabeledTransform(cfg, layout), train=True,
                             seed=cfg.seed + 1, short_side=cfg.data.short_side)
        unl_sampler = EpochBatchSampler(len(unl_ds), micro * s.unlabeled_ratio, seed=cfg.seed + 1,
                                        rank=rank, world_size=world)
    reference = unl_sampler if ssl else lab_sampler
    steps_per_epoch = o.steps_per_epoch or max(1, reference.batches_per_epoch // accum)
    total_steps = o.epochs * steps_per_epoch
    last_step = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps

    step, consumed = 0, {"labeled": 0, "unlabeled": 0}
    checkpoint = latest_checkpoint(run) if resume else None
    if checkpoint is not None:
        meta = load_checkpoint(checkpoint, model, teacher, opt)
        step, consumed = meta["step"], meta["consumed"]
        accelerator.print(f"resumed from {checkpoint} at step {step}")
        _truncate_metrics(run / "metrics.jsonl", step)
    model = accelerator.prepare(model)
    teacher.to(accelerator.device)
    lab_sampler.start_batch = consumed["labeled"]
    lab_iter = iter(_loader(lab_ds, lab_sampler, cfg.data.num_workers))
    if ssl:
        unl_sampler.start_batch = consumed["unlabeled"]
        unl_iter = iter(_loader(unl_ds, unl_sampler, cfg.data.num_workers))

    from tqdm.auto import tqdm

    bar = tqdm(total=last_step, initial=step, disable=not accelerator.is_main_process, desc="train", unit="step")
    started = time.perf_counter()
    interrupted = None
    with _StopFlag() as stop:
        while step < last_step:
            lr = learning_rate(cfg, step, steps_per_epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            xi = warmup_factor(step / steps_per_epoch, s.supervised_epochs, s.ramp_epochs) if ssl else 0.0
            model.train()
            parts = []
            for m in range(accum):
                lab = _to(next(lab_iter), accelerator.device)
                consumed["labeled"] += 1
                unl = None
                if ssl:
                    unl = _to(next(unl_iter), accelerator.device)
                    consumed["unlabeled"] += 1
                sync = accelerator.no_sync(model) if m < accum - 1 else contextlib.nullcontext()
                with sync, accelerator.autocast():
                    losses = compute_losses(cfg, model, teacher, lab, unl, xi)
                    accelerator.backward(losses.total / accum)
                parts.append(losses)
            if o.clip_grad:
                accelerator.clip_grad_norm_(model.parameters(), o.clip_grad)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema_update(teacher, _unwrap(model), ema_decay_at(step, s.ema_decay, s.ema_warmup))
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == last_step:
                record = _record(accelerator, parts, step, steps_per_epoch, lr, lab_ds, unl_ds if ssl else None,
                                 started)
                if accelerator.is_main_process:
                    _append_jsonl(run / "metrics.jsonl", record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", sup=f"{record['supervised']:.3f}")
            stop_now = stop.raised is not None
            if step % cfg.save_every == 0 or stop_now or step == last_step:
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    save_checkpoint(run, step, model, teacher, opt, consumed, cfg.keep_checkpoints)
            if stop_now:
                interrupted = stop.raised
                break
    bar.close()
    if interrupted is not None:
        accelerator.print(f"stopped by signal {interrupted} at step {step}; resume with the same command")
        return {"interrupted": True, "step": step}

    accelerator.wait_for_everyone()
    result = {"step": step, "train_seconds": round(time.perf_counter() - started, 1)}
    if accelerator.is_main_process:
        final = run / "final"
        final.mkdir(exist_ok=True)
        save_file(_unwrap(model).state_dict(), final / "student.safetensors.tmp")
        os.replace(final / "student.safetensors.tmp", final / "student.safetensors")
        save_file(teacher.state_dict(), final / "teacher.safetensors.tmp")
        os.replace(final / "teacher.safetensors.tmp", final / "teacher.safetensors")
        result.update(_final_eval(cfg, teacher, names, final))
        _atomic_json(final / "results.json", result)
    return result


def _final_eval(cfg: RunConfig, teacher: TimeSformer, names: list[str], final: Path) -> dict:
    from encoder.evaluate import compute_metrics, predict

    items = build_eval_items(cfg)
    probs, labels = predict(
        teacher, items, cfg, batch_size=cfg.optim.micro_batch_size,
        views=cfg.eval_temporal_views, crops=cfg.eval_spatial_crops, device=next(teacher.parameters()).device,
        num_workers=cfg.data.num_workers,
    )
    predictions = {"probs": probs.float().contiguous(), "labels": labels.contiguous()}
    save_file(predictions, final / "val_predictions.safetensors")
    metrics = compute_metrics(probs, labels, names)
    return {k: metrics[k] for k in ("top1", "top5", "mean_class_accuracy") if k in metrics}


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _record(accelerator, parts: list[StepLosses], step, steps_per_epoch, lr, lab_ds, unl_ds, started) -> dict:
    """The step's loss terms averaged over micro-batches and processes (every process must call this)."""
    fields = ("total", "supervised", "unlabeled", "mix", "mean_weight", "pseudo_accuracy")
    values = torch.tensor(
        [[_scalar(getattr(p, f)) for f in fields] for p in parts], dtype=torch.float64, device=accelerator.device
    ).nanmean(dim=0)  # (fields,)
    values = accelerator.reduce(values, reduction="mean").tolist()
    avg = {f: (None if math.isnan(v) else round(v, 6)) for f, v in zip(fields, values)}
    return {
        "step": step,
        "epoch": round(step / steps_per_epoch, 4),
        "lr": lr,
        "loss": avg["total"],
        **{f: avg[f] for f in fields[1:]},
        "xi": parts[-1].xi,
        "skipped_clips": lab_ds.take_skipped() + (unl_ds.take_skipped() if unl_ds else 0),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _scalar(value) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _append_jsonl(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop logged steps after the checkpoint (they will be logged again)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines() if line and json.loads(line)["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------- loading


def load_trained(run_dir: str | os.PathLike, which: str = "teacher") -> tuple[RunConfig, TimeSformer, list[str]]:
    """The config, the trained model (final weights, else the latest checkpoint) and class names of a run."""
    run = Path(run_dir)
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be teacher or student, not {which!r}")
    cfg = load_config(run / "config.yaml")
    classes = run / "classes.json"
    if not classes.is_file():
        raise DataError(classes, "missing: not a training run folder")
    names = json.loads(classes.read_text(encoding="utf-8"))["class_names"]
    weights = run / "final" / f"{which}.safetensors"
    if not weights.is_file():
        ckpt = latest_checkpoint(run)
        if ckpt is None:
            raise DataError(weights, "missing, and the run has no checkpoint")
        weights = ckpt / f"{which}.safetensors"
    model = build_model(cfg, len(names), pretrained=False)
    _load_strict(model, weights)
    return cfg, model.eval(), names


def main_train(config_path: str | None, overrides: list[str], resume: bool = True) -> int:
    """CLI entry: ``sefar encoder train CONFIG [key=value ...]`` (``CONFIG`` ``-``: defaults only)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cfg = load_config(None if config_path in (None, "-") else config_path, overrides)
    result = train(cfg, resume=resume)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(result, indent=2))
    return 130 if result.get("interrupted") else 0
