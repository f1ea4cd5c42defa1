"""Bridge run configuration: YAML files under ``configs/bridge/`` mapped onto these dataclasses.

Defaults ← YAML ← ``key=value`` overrides (:func:`load_config`), with every problem reported at once. The resolved
config is saved as ``RUN/config.yaml``. Sections:

* ``encoder``: the frozen visual encoder whose features are cached: ``kind: sefar`` (``export``: a SeFAR export
  folder) or ``kind: frames`` (``frames``: a timm image model applied per frame, :class:`FrameEncoderConfig`);
* ``data``: Gym-QA question files and the clip lists (+ videos) the questions' clips come from;
* ``adapter``: :class:`bridge.adapter.AdapterConfig` (``feature_dim`` and ``llm_width`` are filled at build time;
  ``instruction: true`` feeds the question's text into the Q-Former as InstructBLIP does);
* ``llm``: :class:`bridge.llm.LLMConfig`;
* ``train``: the recipe (objective, steps, batch, optimiser); ``eval``: scoring methods and limits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from common.configfile import load_structured, number_problems
from common.errors import ConfigError

__all__ = ["EncoderSection", "FramesSection", "DataSection", "AdapterSection", "LLMSection", "TrainSection",
           "EvalSection", "BridgeConfig", "load_config", "text_limits", "OBJECTIVES", "METHODS"]

OBJECTIVES = ("name", "letter")
METHODS = ("likelihood", "generate", "letter")


@dataclass
class FramesSection:
    """A frame-wise image encoder (see :class:`bridge.frames.FrameEncoderConfig`)."""

    model: str = "tf_efficientnet_lite0"
    weights: str = "package"
    img_size: int = 112
    num_frames: int = 8
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class EncoderSection:
    kind: str = "sefar"  # sefar | frames
    export: Optional[str] = None  # SeFAR export folder (kind: sefar)
    frames: FramesSection = field(default_factory=FramesSection)
    feature_dtype: str = "float16"  # dtype of the cached features


@dataclass
class DataSection:
    train_questions: str = "outputs/quickstart/gymqa/train.jsonl"
    test_questions: str = "outputs/quickstart/gymqa/test.jsonl"
    train_list: str = "outputs/quickstart/syngym/train_element.txt"  # clips of the train questions
    test_list: str = "outputs/quickstart/syngym/val_element.txt"  # clips of the test questions
    videos: Optional[str] = "outputs/quickstart/syngym/videos"  # None: paths relative to each list's folder
    features: Optional[str] = None  # feature cache root (default: RUN/features); shared between runs if set
    types: list[str] = field(default_factory=lambda: ["element"])  # question types to train and score on
    direction_pairs: Optional[str] = None  # a SynGym manifest.json: report the forward/backward pair check
    max_question_tokens: int = 256  # a longer question (LLM tokens) is an error, in training and evaluation
    max_option_tokens: int = 64  # likewise for each option


@dataclass
class AdapterSection:
    qformer: str = "embedded"  # BERT folder, "embedded" (all-MiniLM-L6-v2) or "random"
    num_layers: Optional[int] = None
    num_queries: int = 32
    cross_attention_frequency: int = 2
    max_elements: int = 8
    max_frames: int = 64
    use_cls: bool = True
    use_fused: bool = False  # also feed the clip's fused feature (the encoder's classifier input) as one token
    output_norm: bool = True
    dropout: float = 0.1  # the Q-Former's hidden and attention dropout
    instruction: bool = False  # InstructBLIP: the question's text also enters the Q-Former
    max_instruction_tokens: int = 128  # BERT tokens of that text at most (the end is kept), as LAVIS
    lavis_checkpoint: Optional[str] = None  # a LAVIS / Video-LLaMA checkpoint to start from (key-mapped)
    vision_width: Optional[int] = None  # cross-attention width (None: the encoder's, or the LAVIS checkpoint's)


@dataclass
class LLMSection:
    path: str = "embedded"
    gguf_file: Optional[str] = None
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto (bfloat16 where the machine computes it natively)
    quantization: Optional[str] = None
    device_map: Optional[str] = None
    template: str = "auto"


@dataclass
class TrainSection:
    objective: str = "name"  # name: the question's stem (no options) -> the right option's text; letter: the letter
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 20
    clip_grad: float = 1.0
    mixed_precision: str = "no"  # no | bf16 | fp16 (accelerate)
    gradient_checkpointing: bool = False  # for 7B LLMs
    save_every: int = 50
    log_every: int = 10
    threads: Optional[int] = None  # torch CPU threads (None: torch's default)


@dataclass
class EvalSection:
    methods: list[str] = field(default_factory=lambda: ["likelihood"])
    max_questions: Optional[int] = None  # first N test questions (None: all)
    circular: bool = True  # also score every rotation of the options (CircularEval)
    max_new_tokens: int = 24
    batch_size: int = 16  # questions per LLM pass (bench/bridge_eval.py); the scores do not depend on it


@dataclass
class BridgeConfig:
    out: str = "outputs/bridge/run"
    seed: int = 0
    encoder: EncoderSection = field(default_factory=EncoderSection)
    data: DataSection = field(default_factory=DataSection)
    adapter: AdapterSection = field(default_factory=AdapterSection)
    llm: LLMSection = field(default_factory=LLMSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)


POSITIVE_KEYS = frozenset({
    "train.steps", "train.batch_size", "train.lr", "train.save_every", "train.log_every", "adapter.num_queries",
    "adapter.cross_attention_frequency", "adapter.max_elements", "adapter.max_frames", "encoder.frames.img_size",
    "encoder.frames.num_frames", "eval.max_new_tokens", "encoder.frames.std", "adapter.max_instruction_tokens",
    "adapter.vision_width", "data.max_question_tokens", "data.max_option_tokens", "eval.batch_size",
})


def validate(cfg: BridgeConfig, earlier: list[str] = ()) -> None:
    """Raise one :class:`ConfigError` listing every problem of ``cfg`` and how to fix it."""
    from bridge.llm import LLMConfig

    p = [*earlier, *number_problems(cfg, positive=POSITIVE_KEYS)]
    if not 0 <= cfg.adapter.dropout < 1:
        p.append(f"adapter.dropout={cfg.adapter.dropout}: use a probability in [0, 1)")
    if cfg.encoder.kind not in ("sefar", "frames"):
        p.append(f"encoder.kind={cfg.encoder.kind!r}: use sefar or frames")
    if cfg.encoder.kind == "sefar" and not cfg.encoder.export:
        p.append("encoder.export is not set: give the SeFAR export folder (or use encoder.kind=frames)")
    if cfg.encoder.feature_dtype not in ("float16", "bfloat16", "float32"):
        p.append(f"encoder.feature_dtype={cfg.encoder.feature_dtype!r}: use float16, bfloat16 or float32")
    if cfg.train.objective not in OBJECTIVES:
        p.append(f"train.objective={cfg.train.objective!r}: use one of {', '.join(OBJECTIVES)}")
    if cfg.train.mixed_precision not in ("no", "bf16", "fp16"):
        p.append(f"train.mixed_precision={cfg.train.mixed_precision!r}: use no, bf16 or fp16")
    unknown = [m for m in cfg.eval.methods if m not in METHODS]
    if unknown or not cfg.eval.methods:
        p.append(f"eval.methods={cfg.eval.methods}: use a non-empty list of {', '.join(METHODS)}")
    bad_types = [t for t in cfg.data.types if t not in ("event", "set", "element", "yesno")]
    if bad_types:
        p.append(f"data.types={cfg.data.types}: use event, set, element or yesno")
    p += [f"llm.{e.removeprefix('llm.')}" for e in LLMConfig(**vars(cfg.llm)).validate()]
    if p:
        raise ConfigError("invalid bridge config:\n  " + "\n  ".join(p))


def text_limits(cfg: BridgeConfig):
    """The :class:`bridge.limits.TextLimits` of the config's ``data`` section."""
    from bridge.limits import TextLimits

    return TextLimits(cfg.data.max_question_tokens, cfg.data.max_option_tokens)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> BridgeConfig:
    """Defaults ← YAML file ← ``key=value`` overrides, validated (every problem in one :class:`ConfigError`)."""
    cfg, problems = load_structured(BridgeConfig, path, overrides or ())
    validate(cfg, problems)
    return cfg
