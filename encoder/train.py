"""The encoder training recipe: supervised-only, FixMatch-threshold or SeFAR, in one readable loop.

    sefar encoder train configs/encoder/syngym_tiny.yaml ssl.mode=sefar optim.lr=0.01

Validate config → set up data, model, teacher, optimizer → loop: one optimizer step per global batch
(gradient accumulation over micro-batches), EMA update of the teacher, JSONL metrics, a checkpoint every
``save_every`` steps and on SIGINT/SIGTERM → final evaluation of student and teacher, weights in ``RUN/final/``.

The schedule, as the reference trains it: an epoch is one pass over the labeled clips, whatever ``ssl.mode``, so
supervised-only and SeFAR runs of one config take the same optimizer steps. During the first
``ssl.supervised_epochs`` the loss is supervised only (no teacher passes, no unlabeled clips are read) and the
teacher is the student's copy; when they end, the teacher becomes an EMA of the student. BatchNorm running
statistics (the conv stem's) come from labeled clips only, as in the supervised baseline.

This module is a leaf: only drivers (the CLI, bench scripts, the quickstart) import it. What reads a run folder
lives in :mod:`encoder.run`.

Runs through Hugging Face Accelerate: ``accelerate launch -m sefar encoder train CFG`` (or ``torchrun``) scales
it over GPUs and nodes; on one CPU the same code runs as is. Resuming restores model, teacher, optimizer, RNG
states and the position in the data stream, so on CPU the losses after a resume equal those of an
uninterrupted run.

Run folder: see :mod:`encoder.run`. Resuming with a config that differs from ``RUN/config.yaml`` in anything
but bookkeeping (:data:`RESUME_FREE`) stops and lists the differing keys, unless ``allow_config_change``.
"""

from __future__ import annotations

import contextlib
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

from common.configfile import saved_config_changes, without_keys
from common.errors import ConfigError, DataError
from common.jsonio import dumps, loads, read_json_object
from common.textio import write_text_atomic
from encoder import augment
from encoder.config import RunConfig, SSLConfig, load_config, warmup_problem
from encoder.data.dataset import ClipDataset, EpochBatchSampler, collate
from encoder.data.sampling import ElementLayout
from encoder.data.splits import Split, write_split
from encoder.run import (
    build_eval_items,
    build_model,
    build_train_items,
    class_names,
    latest_checkpoint,
    load_strict,
    unwrap,
)
from encoder.ssl import (
    ema_decay_at,
    ema_update,
    mse_to_probs,
    pseudo_labels,
    soft_cross_entropy,
    teacher_passes,
    tube_box_mask,
    tube_mix_tokens,
    tube_token_mask,
    warmup_factor,
)
from encoder.timesformer import TimeSformer, TokenMix

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ data


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
    """Weak view (teacher) and strong view (student) of the same frames.

    ``aug.strong=randaugment`` (ours): RandAugment on the weak crop, identical on all frames.
    ``aug.strong=reference``: each element's frames get their own scale-jitter crop and flip, and after
    normalisation each element's colour channels are dropped with ``aug.channel_dropout`` (the reference's
    ``dropout2d``). Then the temporal perturbation (``mod-perturb`` reverses the time order inside each fine element).
    """

    def __init__(self, cfg: RunConfig, layout: ElementLayout):
        super().__init__(cfg)
        self.reference = cfg.aug.strong == "reference"
        self.strong = augment.strong_spatial_transform(cfg.aug.randaug_ops, cfg.aug.randaug_magnitude)
        self.temporal = augment.temporal_perturbation(cfg.aug.temporal)
        self.dropout = cfg.aug.channel_dropout
        self.layout = layout

    def __call__(self, frames: torch.Tensor, generator: torch.Generator) -> dict:
        weak = self.weak(frames)  # (K, C, H, W) uint8
        if self.reference:
            strong = augment.per_element_views(frames, self.layout, self.weak)  # (K, C, H, W)
        else:
            strong = self.strong(weak)
        strong = augment.normalize(strong[self.temporal(self.layout, generator)], self.mean, self.std)  # (C, K, H, W)
        if self.reference:
            strong = augment.channel_dropout(strong, self.layout, self.dropout, generator)
        return {"weak": augment.normalize(weak, self.mean, self.std), "strong": strong}


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


def build_optimizer(cfg: RunConfig, model: TimeSformer) -> torch.optim.Optimizer:
    """SGD (nesterov) or AdamW, with weight decay on weight matrices only (not norms, biases, embeddings)."""
    skip = model.no_weight_decay()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:  # a frozen pretrained stem
            continue
        (no_decay if p.ndim <= 1 or name in skip or name.split(".")[0] in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    o = cfg.optim
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=(o.momentum, 0.999))
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)


def learning_rate(cfg: RunConfig, step: int, steps_per_epoch: int) -> float:
    """Step decay ×lr_gamma at each milestone epoch (``schedule=step``) or half a cosine from ``lr`` at the end of
    the warm-up to 0 one step past the last update (``schedule=cosine``, which ignores ``milestones``), after an
    optional linear warm-up."""
    o = cfg.optim
    epoch = step / steps_per_epoch
    if o.schedule == "cosine":
        start, total = o.warmup_steps, o.epochs * steps_per_epoch
        progress = min(1.0, max(0.0, (step - start) / max(1, total - start)))
        lr = 0.5 * o.lr * (1.0 + math.cos(math.pi * progress))
    else:
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
    student: torch.nn.Module,
    teacher: TimeSformer,
    labeled: dict,
    unlabeled: dict | None,
    xi: float,
    ssl: SSLConfig,
    patch_size: int,
) -> StepLosses:
    """L = L_sup + ξ(γ1 η L_un + γ2 η' L_mix) for one micro-batch (``unlabeled=None``: L_sup only).

    The student sees the labeled clips in one forward, whose BatchNorm batches update the running statistics, and the
    strong (+ mixed) unlabeled clips in a second one that normalises with its own batch but leaves the running
    statistics alone: the teacher, which copies them, predicts weak views. ``patch_size``: the token grid of the mix.
    """
    zero = torch.zeros((), device=labeled["video"].device)
    sup = F.cross_entropy(student(labeled["video"]).float(), labeled["label"], label_smoothing=ssl.label_smoothing)
    if unlabeled is None:
        return StepLosses(sup, sup, zero, zero, xi, 0.0, float("nan"))

    pl = _pseudo_labels(student, teacher, unlabeled["weak"], ssl)
    strong = unlabeled["strong"]  # (B_u, C, K, H, W)
    plan = mix_plan(strong, ssl, patch_size) if ssl.mode == "sefar" and ssl.mix and strong.shape[0] > 1 else None
    with running_stats_frozen(student):
        if plan is None:
            logits = student(strong)
        elif ssl.mix_space == "tokens":  # the mixed clips reuse the strong clips' stem tokens
            logits = student(strong, mix=TokenMix(plan.partner, plan.mask.flatten()))
        else:
            logits = student(torch.cat([strong, tube_mix_tokens(strong, plan.partner, plan.mask, patch_size)]))
        logits = logits.float()  # (B_u [+ B_u], classes)
    b_u = strong.shape[0]
    un = (pl.weight * F.cross_entropy(logits[:b_u], pl.target, reduction="none")).mean()
    mix = zero
    if plan is not None:
        lam, partner = plan.lam, plan.partner
        target = lam * pl.probs + (1 - lam) * pl.probs[partner]  # (B_u, classes)
        weight = lam * pl.weight + (1 - lam) * pl.weight[partner]  # η'
        per_clip = mse_to_probs if ssl.mix_loss == "mse" else soft_cross_entropy
        mix = (weight * per_clip(logits[b_u:], target)).mean()
    total = sup + xi * (ssl.gamma1 * un + ssl.gamma2 * mix)
    accuracy = (pl.target == unlabeled["label"]).float().mean().item() if (unlabeled["label"] >= 0).all() else math.nan
    return StepLosses(total, sup, un, mix, xi, pl.weight.mean().item(), accuracy)


def _pseudo_labels(student, teacher: TimeSformer, weak: torch.Tensor, ssl: SSLConfig):
    """Teacher targets (SeFAR: U dropout passes, Adaptive Regulation); FixMatch: the student, one pass."""
    if ssl.mode == "fixmatch":
        model = unwrap(student)
        return pseudo_labels(teacher_passes(model, model.head, weak, passes=1), adaptive=False,
                             threshold=ssl.threshold)
    logits = teacher_passes(teacher, teacher.head, weak, passes=ssl.passes if ssl.adaptive else 1)
    return pseudo_labels(logits, adaptive=ssl.adaptive, threshold=ssl.threshold, beta=ssl.beta, eps=ssl.eps)


@dataclass
class MixPlan:
    partner: torch.Tensor  # (B_u,) partner of each clip
    mask: torch.Tensor  # (grid_h, grid_w) bool: the tube, True where the partner's patch goes (same in every frame)
    lam: float  # fraction of each clip kept


def mix_plan(strong: torch.Tensor, ssl: SSLConfig, patch: int) -> MixPlan:
    """λ ~ Beta(α, α), a random partner per clip and the tube (scattered tokens or one box) to take from it."""
    lam = float(torch.distributions.Beta(ssl.mix_alpha, ssl.mix_alpha).sample())
    partner = torch.randperm(strong.shape[0]).to(strong.device)
    h, w = strong.shape[-2:]
    if ssl.mix_shape == "tokens":
        mask, lam = tube_token_mask(h // patch, w // patch, lam)
        return MixPlan(partner, mask, lam)
    mask, lam = tube_box_mask(h // patch, w // patch, lam)
    return MixPlan(partner, mask, lam)


@contextlib.contextmanager
def running_stats_frozen(model: torch.nn.Module):
    """BatchNorm layers in train mode normalise with the batch's statistics but do not update their running ones."""
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


# ---------------------------------------------------------------------------------------- checkpoints


def _atomic_json(path: Path, value) -> None:
    write_text_atomic(path, dumps(value, indent=2) + "\n")


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


def save_checkpoint(run: Path, step: int, student, teacher, opt, consumed: dict, keep: int,
                    train_seconds: float = 0.0, pinned: tuple[int, ...] = ()) -> Path:
    """Write ``checkpoints/step_XXXXXXX`` into a temp folder, then rename it: never half-written. Keeps the ``keep``
    latest checkpoints and those of the ``pinned`` steps; ``train_seconds``: the run's training time so far."""
    root = run / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(unwrap(student).state_dict(), tmp / "student.safetensors")
    save_file(teacher.state_dict(), tmp / "teacher.safetensors")
    tensors, meta = _optimizer_tensors(opt)
    save_file({**tensors, "rng.torch": torch.get_rng_state()}, tmp / "optimizer.safetensors")
    py_state = random.getstate()
    np_state = np.random.get_state()
    meta.update(
        step=step,
        consumed=consumed,
        train_seconds=round(train_seconds, 2),
        rng_python=[py_state[0], list(py_state[1]), py_state[2]],
        rng_numpy=[np_state[0], np_state[1].tolist(), *np_state[2:]],
    )
    _atomic_json(tmp / "state.json", meta)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_json(root / "latest.json", {"checkpoint": final.name, "step": step})
    rotating = [p for p in sorted(root.glob("step_*")) if int(p.name.removeprefix("step_")) not in pinned]
    for old in rotating[:-keep]:
        shutil.rmtree(old)
    return final


def load_checkpoint(path: Path, student, teacher, opt) -> dict:
    """Restore weights, optimizer and RNG states; returns ``state.json``."""
    for name in ("student.safetensors", "teacher.safetensors", "optimizer.safetensors", "state.json"):
        if not (path / name).is_file():
            raise DataError(path / name, "missing: checkpoint is incomplete")
    meta = read_json_object(path / "state.json")
    try:
        load_strict(unwrap(student), path / "student.safetensors")
        load_strict(teacher, path / "teacher.safetensors")
        tensors = load_file(path / "optimizer.safetensors")
    except (OSError, RuntimeError, SafetensorError) as err:
        raise DataError(path, f"unreadable checkpoint: {' '.join(str(err).split())[:200]}") from None
    torch.set_rng_state(tensors.pop("rng.torch"))
    _load_optimizer(opt, tensors, meta)
    v, state, pos = meta["rng_python"]
    random.setstate((v, tuple(state), pos))
    kind, keys, *rest = meta["rng_numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    return meta


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


#: Keys that may change between a run and its resumption: bookkeeping, not the maths of the run.
RESUME_FREE = ("out", "max_steps", "save_every", "keep_checkpoints", "save_steps", "log_every", "data.num_workers",
               "eval_temporal_views", "eval_spatial_crops")
#: What a run forked from another run's checkpoint (``train(fork_from=...)``) may change beyond :data:`RESUME_FREE`:
#: the keys that act on the unlabeled clips and the teacher only, so not during the supervised-only steps (ξ = 0, the
#: teacher a copy of the student), where the two runs are the same run.
FORK_FREE = ("ssl.mode", "ssl.threshold", "ssl.adaptive", "ssl.mix", "ssl.mix_alpha", "ssl.mix_shape", "ssl.mix_space",
             "ssl.mix_loss", "ssl.gamma1", "ssl.gamma2", "ssl.beta", "ssl.eps", "ssl.passes", "ssl.unlabeled_ratio",
             "ssl.ramp_epochs", "ssl.ema_decay", "ssl.ema_warmup", "ssl.ema_per_micro_batch", "aug.temporal",
             "aug.strong", "aug.randaug_ops", "aug.randaug_magnitude", "aug.channel_dropout")


def supervised_steps_of(cfg: RunConfig) -> int | None:
    """The step where ``cfg``'s supervised-only epochs end, when the config alone fixes it (``optim.steps_per_epoch``
    set) and it falls inside the run; else None. Runs of one config that differ only in :data:`FORK_FREE` keys
    (a supervised-only run and a SeFAR run, say) are the same run up to there: see ``train(fork_from=...)``."""
    if not cfg.optim.steps_per_epoch:  # it depends on the number of labeled clips and of processes
        return None
    schedule = Schedule.build(cfg, cfg.optim.steps_per_epoch, world=1)
    return schedule.supervised_steps if 0 < schedule.supervised_steps < schedule.last_step else None


def check_resumable(run: Path, cfg: RunConfig, allow_change: bool, free: tuple[str, ...] = ()) -> list[str]:
    """Stop when ``cfg`` differs from the run's saved config (beyond :data:`RESUME_FREE` and ``free``), unless
    allowed. Returns every difference beyond :data:`RESUME_FREE`, those in ``free`` too."""
    saved_path = run / "config.yaml"
    if not saved_path.is_file():
        return []
    differences = saved_config_changes(saved_path, lambda path: load_config(path).to_dict(), cfg.to_dict(),
                                       RESUME_FREE)
    changed = without_keys(differences, free)
    if not changed:
        return differences
    if not allow_change:
        raise ConfigError(
            f"{saved_path}: the run was started with another config; differing keys:\n  - " + "\n  - ".join(changed)
            + "\nuse the same config, another `out=`, --no-resume to restart, or --allow-config-change to continue"
        )
    log.warning("continuing %s with a changed config: %s", run, "; ".join(changed))
    return differences


def _fork_source(checkpoint: Path, cfg: RunConfig, allow_change: bool) -> tuple[Path, list[str]]:
    """The checkpoint to fork a new run from, once its run's config is known to fit ``cfg`` (see :func:`train`), and
    how the two configs differ (keys of :data:`FORK_FREE`, or any with ``allow_change``)."""
    if not (checkpoint / "state.json").is_file():
        raise DataError(checkpoint, "not a checkpoint folder (RUN/checkpoints/step_XXXXXXX with state.json)")
    source = checkpoint.parent.parent
    if not (source / "config.yaml").is_file():
        raise DataError(source / "config.yaml", "missing: the forked run's config is needed to check it fits")
    if source.resolve() == Path(cfg.out).resolve():
        raise ConfigError(f"fork_from={checkpoint}: a run cannot fork from itself (it resumes)")
    return checkpoint, check_resumable(source, cfg, allow_change, free=FORK_FREE)


def _check_fork_step(checkpoint: Path, changes: list[str], sched: "Schedule", allow_change: bool) -> None:
    """A run of another config is the same run only during the supervised-only steps: refuse a later fork (it would
    be neither run), unless allowed."""
    step = read_json_object(checkpoint / "state.json").get("step")
    if not isinstance(step, int) or step <= sched.supervised_steps:
        return
    message = (f"{checkpoint}: step {step} is after the {sched.supervised_steps} supervised-only steps that its run "
               f"shares with this one ({'; '.join(changes)})")
    if not allow_change:
        raise ConfigError(message + "; fork from a checkpoint at or before that step, or use --allow-config-change")
    log.warning("%s: forking anyway", message)


def _copy_metrics(source: Path, target: Path, step: int) -> None:
    """A forked run's log starts with its source's records up to the fork (the steps it did not train itself)."""
    lines = source.read_text(encoding="utf-8").splitlines() if source.is_file() else []
    keep = [line for line in lines if _logged_step(line) <= step]
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    os.replace(tmp, target)


def _write_run_files(run: Path, cfg: RunConfig, names: list[str], labeled, unlabeled) -> None:
    run.mkdir(parents=True, exist_ok=True)
    tmp = run / "config.yaml.tmp"
    OmegaConf.save(OmegaConf.create(cfg.to_dict()), tmp)
    os.replace(tmp, run / "config.yaml")
    categories = str(cfg.data_path(cfg.data.categories)) if cfg.data.categories else None
    _atomic_json(run / "classes.json", {"class_names": names, "categories": categories})
    write_split(run / "split", Split(labeled, unlabeled), ratio=cfg.data.label_ratio, seed=cfg.data.split_seed,
                method=cfg.data.split_method)


@dataclass
class Schedule:
    """Step counts of a run; an epoch is one pass over the labeled clips (the same for every ``ssl.mode``)."""

    accum: int  # micro-batches per optimizer step
    steps_per_epoch: int
    total_steps: int  # optim.epochs x steps_per_epoch
    last_step: int  # total_steps, or max_steps when smaller
    supervised_steps: int  # steps of supervised-only training; the teacher is seeded when they end

    @classmethod
    def build(cls, cfg: RunConfig, labeled_batches_per_epoch: int, world: int) -> "Schedule":
        o = cfg.optim
        if o.batch_size % (o.micro_batch_size * world):
            raise ConfigError(f"optim.batch_size={o.batch_size} is not a multiple of micro_batch_size × processes")
        accum = o.batch_size // (o.micro_batch_size * world)
        per_epoch = o.steps_per_epoch or max(1, labeled_batches_per_epoch // accum)
        total = o.epochs * per_epoch
        if problem := warmup_problem(o, per_epoch):
            raise ConfigError(problem)
        last = min(total, cfg.max_steps) if cfg.max_steps else total
        return cls(accum, per_epoch, total, last, math.ceil(cfg.ssl.supervised_epochs * per_epoch))

    def xi(self, step: int, ssl: SSLConfig, epochs: int) -> float:
        """ξ for the optimizer step ``step`` (0-based); always 0 for supervised-only runs."""
        if ssl.mode == "supervised":
            return 0.0
        return warmup_factor(step / self.steps_per_epoch, ssl.supervised_epochs, ssl.ramp_epochs, epochs)

    def ema_decay(self, step: int, ssl: SSLConfig) -> float:
        """Decay of the EMA update after step ``step``: 0 (teacher = student) until the supervised-only epochs end,
        then ``ssl.ema_decay`` (with warm-up counted from the seeding); ``ema_per_micro_batch``: ``decay^accum``."""
        if step < self.supervised_steps:
            return 0.0
        decay = ema_decay_at(step - self.supervised_steps, ssl.ema_decay, ssl.ema_warmup)
        return decay**self.accum if ssl.ema_per_micro_batch else decay


def train(cfg: RunConfig, resume: bool = True, allow_config_change: bool = False,
          fork_from: str | os.PathLike | None = None) -> dict:
    """Train one run into ``cfg.out``; returns the final validation metrics of student and teacher (and run facts).

    ``fork_from``: a checkpoint folder of another run (``RUN/checkpoints/step_XXXXXXX``) to start from, when this run
    has no checkpoint of its own yet: its weights, teacher, optimizer, RNG states, data position and training time, and
    its logged steps. A run whose config differs from that run's only in keys that act on the unlabeled clips and the
    teacher (:data:`FORK_FREE`: ``ssl.mode``, the mixing, the strong augmentation, ...) then goes on exactly as if it
    had trained those steps itself, provided they were supervised-only steps in both (ξ = 0, the teacher a copy of the
    student): e.g. SeFAR forked from a supervised-only run at the end of its ``ssl.supervised_epochs``
    (:func:`supervised_steps_of`; ``save_steps`` keeps that checkpoint). A later fork, or other differences, need
    ``allow_config_change``.
    """
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    world, rank = accelerator.num_processes, accelerator.process_index
    s, micro = cfg.ssl, cfg.optim.micro_batch_size
    run = Path(cfg.out)
    checkpoint = latest_checkpoint(run) if resume else None
    forked = checkpoint is None and fork_from is not None
    if checkpoint is not None:
        check_resumable(run, cfg, allow_config_change)
    elif forked:
        checkpoint, fork_changes = _fork_source(Path(fork_from), cfg, allow_config_change)

    _seed_everything(cfg.seed)
    layout = ElementLayout.from_combo(cfg.model.combo)  # parsed once: data, transforms and model share it
    labeled_items, unlabeled_items = build_train_items(cfg)
    names = class_names(cfg, labeled_items + unlabeled_items)
    ssl = s.mode != "supervised"
    if ssl and not unlabeled_items:
        raise ConfigError("no unlabeled clips: use ssl.mode=supervised or a smaller data.label_ratio")

    model = build_model(cfg, len(names), layout=layout)
    teacher = build_model(cfg, len(names), pretrained=False, layout=layout).requires_grad_(False)
    teacher.load_state_dict(model.state_dict())
    opt = build_optimizer(cfg, model)

    # data streams: one labeled micro-batch (and μ× unlabeled) per forward
    lab_ds = ClipDataset(labeled_items, layout.num_frames, LabeledTransform(cfg), train=True,
                         seed=cfg.seed, short_side=cfg.data.short_side, jitter=cfg.data.frame_jitter,
                         cache_mb=cfg.data.cache_mb)
    lab_sampler = EpochBatchSampler(len(lab_ds), micro, seed=cfg.seed, rank=rank, world_size=world)
    sched = Schedule.build(cfg, lab_sampler.batches_per_epoch, world)
    if forked and fork_changes:
        _check_fork_step(checkpoint, fork_changes, sched, allow_config_change)
    if accelerator.is_main_process:  # once the run is known to be valid
        _write_run_files(run, cfg, names, labeled_items, unlabeled_items)
    if ssl:
        unl_ds = ClipDataset(unlabeled_items, layout.num_frames, UnlabeledTransform(cfg, layout), train=True,
                             seed=cfg.seed + 1, short_side=cfg.data.short_side,
                             jitter=cfg.data.frame_jitter, cache_mb=cfg.data.cache_mb)
        unl_sampler = EpochBatchSampler(len(unl_ds), micro * s.unlabeled_ratio, seed=cfg.seed + 1,
                                        rank=rank, world_size=world)

    step, consumed, earlier_seconds = 0, {"labeled": 0, "unlabeled": 0}, 0.0
    if checkpoint is not None:
        meta = load_checkpoint(checkpoint, model, teacher, opt)
        step, consumed, earlier_seconds = meta["step"], meta["consumed"], meta.get("train_seconds", 0.0)
        accelerator.print(f"{'forked' if forked else 'resumed'} from {checkpoint} at step {step}")
    if accelerator.is_main_process:  # the only process that writes the log
        if checkpoint is None or forked:  # a new run: no record of an earlier one
            (run / "forked_from.json").unlink(missing_ok=True)
        if forked:  # the log starts with the source's records up to the fork, already cut there
            _copy_metrics(checkpoint.parent.parent / "metrics.jsonl", run / "metrics.jsonl", step)
            _atomic_json(run / "forked_from.json", {"checkpoint": str(checkpoint), "step": step})
        else:  # at step 0 too: a run killed before its first checkpoint
            _truncate_metrics(run / "metrics.jsonl", step)
    model = accelerator.prepare(model)
    teacher.to(accelerator.device)
    lab_sampler.start_batch = consumed["labeled"]
    lab_iter = iter(_loader(lab_ds, lab_sampler, cfg.data.num_workers))
    unl_iter = None
    if ssl:
        unl_sampler.start_batch = consumed["unlabeled"]
        unl_iter = _LazyIterator(lambda: iter(_loader(unl_ds, unl_sampler, cfg.data.num_workers)))

    from tqdm.auto import tqdm

    bar = tqdm(total=sched.last_step, initial=step, disable=not accelerator.is_main_process, desc="train", unit="step")
    started = time.perf_counter() - earlier_seconds  # training time counts over resumptions (and a fork's source)
    interrupted = None
    patch = unwrap(model).cfg.patch_size
    with _StopFlag() as stop:
        while step < sched.last_step:
            lr = learning_rate(cfg, step, sched.steps_per_epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            xi = sched.xi(step, s, cfg.optim.epochs)
            model.train()
            parts = []
            for m in range(sched.accum):
                lab = _to(next(lab_iter), accelerator.device)
                consumed["labeled"] += 1
                unl = None
                if ssl and xi > 0:  # while ξ = 0 the unlabeled clips are neither read nor seen
                    unl = _to(next(unl_iter), accelerator.device)
                    consumed["unlabeled"] += 1
                sync = accelerator.no_sync(model) if m < sched.accum - 1 else contextlib.nullcontext()
                with sync, accelerator.autocast():
                    losses = compute_losses(model, teacher, lab, unl, xi, s, patch)
                    accelerator.backward(losses.total / sched.accum)
                parts.append(losses)
            if cfg.optim.clip_grad:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema_update(teacher, unwrap(model), sched.ema_decay(step, s))
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == sched.last_step:
                record = _record(accelerator, parts, step, sched.steps_per_epoch, lr, lab_ds, unl_ds if ssl else None,
                                 started)
                if accelerator.is_main_process:
                    _append_jsonl(run / "metrics.jsonl", record)
                    bar.set_postfix(loss=_short(record["loss"]), sup=_short(record["supervised"]))
            stop_now = stop.raised is not None
            if step % cfg.save_every == 0 or stop_now or step == sched.last_step or step in cfg.save_steps:
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    save_checkpoint(run, step, model, teacher, opt, consumed, cfg.keep_checkpoints,
                                    time.perf_counter() - started, tuple(cfg.save_steps))
            if stop_now:
                interrupted = stop.raised
                break
    bar.close()
    if interrupted is not None:
        accelerator.print(f"stopped by signal {interrupted} at step {step}; resume with the same command")
        return {"interrupted": True, "step": step}

    accelerator.wait_for_everyone()
    result = {"step": step, "train_seconds": round(time.perf_counter() - started, 1)}
    if (run / "forked_from.json").is_file():  # the steps before it were trained by the run it names
        result["forked_from"] = read_json_object(run / "forked_from.json")
    stem = unwrap(model).patch_embed.proj
    if getattr(stem, "frozen", False):  # what model.stem_dtype (auto: by this machine) computed the frozen CNN in
        result["stem_dtype"] = str(stem.compute_dtype).removeprefix("torch.")
    if accelerator.is_main_process:
        result = _finish(cfg, run, {"student": unwrap(model), "teacher": teacher}, names, result)
    return result


class _LazyIterator:
    """An iterator created on first use: the unlabeled loader starts only when ξ first becomes positive."""

    def __init__(self, make) -> None:
        self._make, self._it = make, None

    def __next__(self):
        if self._it is None:
            self._it = self._make()
        return next(self._it)


#: The model whose metrics are also the run's headline (``top1`` etc. at the top level of ``results.json``).
HEADLINE = "teacher"


def _finish(cfg: RunConfig, run: Path, models: dict[str, TimeSformer], names: list[str], facts: dict) -> dict:
    """Save the final weights, evaluate student and teacher (one pass over the val clips for both), write
    ``final/results.json`` (with the run ``facts``)."""
    from encoder.evaluate import predict_views_many

    final = run / "final"
    final.mkdir(exist_ok=True)
    result = dict(facts)
    for which, model in models.items():
        save_file(model.state_dict(), final / f"{which}.safetensors.tmp")
        os.replace(final / f"{which}.safetensors.tmp", final / f"{which}.safetensors")
    device = next(next(iter(models.values())).parameters()).device
    outputs = predict_views_many(models, build_eval_items(cfg), cfg, batch_size=cfg.optim.micro_batch_size,
                                 views=cfg.eval_temporal_views, crops=cfg.eval_spatial_crops, device=device,
                                 num_workers=cfg.data.num_workers)
    for which, out in outputs.items():
        result[which] = _final_metrics(out.probs, out.labels, names, final / f"val_predictions_{which}.safetensors")
    result.update(result[HEADLINE], headline=HEADLINE)
    _atomic_json(final / "results.json", result)
    return result


def _final_metrics(probs: torch.Tensor, labels: torch.Tensor, names: list[str], predictions_file: Path) -> dict:
    """Write one model's val predictions to ``predictions_file``; its headline metrics."""
    from encoder.evaluate import NonFiniteScores, compute_metrics

    tmp = predictions_file.with_name(predictions_file.name + ".tmp")
    save_file({"probs": probs.float().contiguous(), "labels": labels.contiguous()}, tmp)
    os.replace(tmp, predictions_file)
    try:
        metrics = compute_metrics(probs, labels, names)
    except NonFiniteScores as err:
        raise DataError(predictions_file.with_name(f"{predictions_file.stem.rsplit('_', 1)[-1]}.safetensors"),
                        f"{err}: training diverged (the weights are saved, the run has no results)") from None
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
    avg = {f: (round(v, 6) if math.isfinite(v) else None) for f, v in zip(fields, values)}  # JSON has no NaN/inf
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


def _short(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _append_jsonl(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(dumps(record) + "\n")


def _logged_step(line: str) -> float:
    """The step of a metrics line; infinity for a line that is not a whole record (so it is dropped)."""
    try:
        return loads(line, "metrics.jsonl")["step"]
    except (DataError, KeyError, TypeError):
        return math.inf


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop logged steps after the checkpoint (they will be logged again), and a last line cut by a
    kill."""
    if path.is_file():
        _copy_metrics(path, path, step)


def main_train(
    config_path: str | None, overrides: list[str], resume: bool = True, allow_config_change: bool = False,
    fork_from: str | None = None,
) -> int:
    """CLI entry: ``sefar encoder train CONFIG [key=value ...]`` (``CONFIG`` ``-``: defaults only)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cfg = load_config(None if config_path in (None, "-") else config_path, overrides)
    result = train(cfg, resume=resume, allow_config_change=allow_config_change, fork_from=fork_from)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(dumps(result, indent=2))
    return 130 if result.get("interrupted") else 0
