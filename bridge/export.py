"""Adapter exports: a folder anyone can load with the bridge alone (``config.json`` + ``adapter.safetensors``).

``config.json``::

    {"format": "sefar-bridge-adapter", "format_version": 1,
     "adapter": {...AdapterConfig...},            # rebuilds the Q-Former without its BERT folder
     "llm": {...LLMConfig...},                    # the frozen LLM it was trained with (path as given)
     "template": "chat" | "vicuna_v1.1",
     "features": {"kind": "sefar" | "frames", "source": "<encoder export or model name>",
                  "layout": [[frame indices of element 0], ...], "use_cls": true},
     "prompt": {"question": "...", "objective": "name" | "letter" | "conversation"},
     "source": {"run": "<run folder>", "step": 300},
     "weights": {"file": "adapter.safetensors", "sha256": "<64 hex digits>", "bytes": int}}

``adapter.safetensors`` holds the :class:`~bridge.adapter.QFormerAdapter` state dict (the only trained weights).
Loading checks its tensors' names and shapes against ``adapter`` and its SHA-256 against ``weights`` (exports
written before digests were recorded load with a one-line notice).
An adapter with the instruction option (``"instruction": true`` in ``adapter``) also needs its Q-Former's BERT
tokenizer: the export saves it in ``qformer_tokenizer/`` and :func:`load_adapter` restores it from there.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
import torch
from torch import Tensor

from bridge.adapter import AdapterConfig, QFormerAdapter
from bridge.bert import load_qformer_tokenizer
from common.configfile import field_problems
from common.errors import ConfigError, DataError
from common.jsonio import loads, write_json
from common.textio import read_json_object
from encoder.export import check_weights_digest, weights_record

__all__ = ["FORMAT", "CONFIG_FILE", "WEIGHTS_FILE", "write_adapter_export", "read_adapter_config",
           "TOKENIZER_DIR", "write_qformer_tokenizer", "load_adapter", "load_video_llm", "is_adapter_export",
           "CHECKPOINT", "read_checkpoint", "export_run"]

_log = logging.getLogger(__name__)

FORMAT = "sefar-bridge-adapter"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "adapter.safetensors"
TOKENIZER_DIR = "qformer_tokenizer"  # the instruction's BERT tokenizer (adapters with the instruction option)
CHECKPOINT = "checkpoints/last.safetensors"  # a training run's last state, inside the run folder (bridge.train)


def write_qformer_tokenizer(folder: str | os.PathLike, adapter: QFormerAdapter) -> Path | None:
    """Save the adapter's instruction tokenizer as ``folder/qformer_tokenizer`` (replaced whole); None without one."""
    if adapter.tokenizer is None:
        return None
    target = Path(folder) / TOKENIZER_DIR
    staging = target.with_name(f".{TOKENIZER_DIR}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    adapter.tokenizer.save_pretrained(os.fspath(staging))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def write_adapter_export(out: str | os.PathLike, adapter: QFormerAdapter, *, llm: dict, template: str,
                         features: dict, prompt: dict, source: dict | None = None) -> Path:
    """Write ``out/config.json`` and ``out/adapter.safetensors`` (each atomically; weights first), and
    ``out/qformer_tokenizer/`` for an adapter with the instruction option."""
    out = Path(out)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "adapter": adapter.cfg.to_dict(), "llm": llm,
              "template": template, "features": features, "prompt": prompt, "source": source or {}}
    out.mkdir(parents=True, exist_ok=True)
    write_qformer_tokenizer(out, adapter)
    config["weights"] = weights_record(out / WEIGHTS_FILE, adapter.state_dict())
    write_json(out / CONFIG_FILE, config, indent=1)
    return out


def is_adapter_export(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def read_adapter_config(folder: str | os.PathLike) -> dict:
    """The export's ``config.json``, checked for its format."""
    path = Path(folder) / CONFIG_FILE
    config = read_json_object(path, "missing: not an adapter export (make one with `sefar bridge export RUN OUT`)")
    if config.get("format") != FORMAT:
        raise DataError(path, f"not an adapter export (format={config.get('format')!r})")
    return config


# Largest sizes an adapter config.json may give (a damaged file must not make the reader allocate without bound).
_LIMITS = {"feature_dim": 1 << 16, "fused_dim": 1 << 16, "llm_width": 1 << 16, "num_layers": 96,
           "num_queries": 4096, "cross_attention_frequency": 96, "max_elements": 4096, "max_frames": 1 << 16, "max_instruction_tokens": 1 << 16,
           "hidden_size": 1 << 16, "num_attention_heads": 1024, "intermediate_size": 1 << 18, "layer_norm_eps": 1.0,
           "vocab_size": 1 << 24, "max_position_embeddings": 1 << 20}


def _adapter_config(path: Path, config: dict) -> AdapterConfig:
    """The :class:`AdapterConfig` of an export's ``config.json`` (``path``), every problem one :class:`DataError`."""
    values = config.get("adapter")
    if not isinstance(values, dict):
        raise DataError(path, "adapter must be an object (the adapter's architecture)")
    problems = field_problems(AdapterConfig, values, limits=_LIMITS)
    problems += [f"unknown key {k!r}" for k in sorted(set(values) - set(AdapterConfig.__dataclass_fields__))]
    record = config.get("weights")
    if record is not None and not (isinstance(record, dict) and record.get("file") == WEIGHTS_FILE
                                   and isinstance(record.get("sha256"), str)
                                   and re.fullmatch(r"[0-9a-f]{64}", record["sha256"])):
        problems.append(f"weights must be {{'file': '{WEIGHTS_FILE}', 'sha256': <64 hex digits>, ...}}")
    if problems:
        raise DataError(path, "; ".join(problems))
    return AdapterConfig(**{**values, "layer_norm_eps": float(values.get("layer_norm_eps", 1e-12))})  # 1 -> 1.0


def _build(path: Path, cfg: AdapterConfig, tokenizer=None) -> QFormerAdapter:
    try:
        return QFormerAdapter(cfg, tokenizer=tokenizer)
    except (ConfigError, ValueError) as err:  # e.g. a hidden size that the attention heads do not divide
        raise DataError(path, f"the adapter config does not build a Q-Former: {' '.join(str(err).split())}") from None


def _check_shapes(weights: Path, own: dict[str, Tensor], state: dict[str, Tensor]) -> None:
    """Names and shapes of the file's tensors must be the config's; the first differences name the tensors."""
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise DataError(weights, f"does not match the adapter config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong = [f"{k} is {list(state[k].shape)}, config.json gives {list(own[k].shape)}"
             for k in own if state[k].shape != own[k].shape]
    if wrong:
        raise DataError(weights, "tensor shapes do not match the adapter's config.json (weights of another adapter, "
                                 f"or another llm_width?): {'; '.join(wrong[:3])}")


def load_adapter(folder: str | os.PathLike, device: str = "cpu") -> tuple[QFormerAdapter, dict]:
    """``(adapter in eval mode, config)`` of an export; the state dict must match exactly, names and shapes, and
    the weights the SHA-256 that config.json records (exports without one load with a one-line notice). An
    instruction adapter gets the export's own tokenizer (``qformer_tokenizer/``), not its BERT folder's."""
    folder = Path(folder)
    config = read_adapter_config(folder)
    cfg = _adapter_config(folder / CONFIG_FILE, config)
    tokenizer = None
    if cfg.instruction:
        tokenizer = load_qformer_tokenizer(folder / TOKENIZER_DIR, "missing: an adapter with adapter.instruction=true "
                                           "needs its Q-Former tokenizer here (write the export again with "
                                           "`sefar bridge export RUN OUT`)")
    weights = folder / WEIGHTS_FILE
    try:
        state = load_file(os.fspath(weights))
    except (SafetensorError, OSError) as err:
        raise DataError(weights, f"unreadable adapter weights ({' '.join(str(err).split())})") from None
    with torch.device("meta"):  # the config's shapes without allocating them
        own = _build(folder / CONFIG_FILE, cfg, tokenizer).state_dict()
    _check_shapes(weights, own, state)
    check_weights_digest(weights, (config.get("weights") or {}).get("sha256"))
    if any(t.is_floating_point() and not bool(t.isfinite().all()) for t in state.values()):
        raise DataError(weights, "adapter weights hold NaN or infinite values")
    adapter = _build(folder / CONFIG_FILE, cfg, tokenizer)
    adapter.load_state_dict(state)
    return adapter.to(device).eval(), config


def load_video_llm(folder: str | os.PathLike, llm: str | os.PathLike | None = None, device: str | None = "cpu",
                   quantization: str | None = None, loaded=None):
    """``(VideoLLM, config)``: the export's adapter on its LLM.

    ``llm``: a folder or GGUF file to use instead of the recorded one; None -> the recorded LLM, or the embedded
    SmolLM2 when the recorded path is not on this machine (with a one-line notice). ``loaded``: an already loaded
    :class:`~bridge.llm.LoadedLLM` to reuse (drivers that score several adapters on one LLM). The LLM's width
    must be the adapter's. ``device`` is checked (:func:`bridge.devices.check_device`); the adapter ends on the
    device of the LLM's input embeddings, also when the recorded ``llm.device_map`` places the LLM.
    """
    from bridge.devices import check_device
    from bridge.llm import EMBEDDED, LLMConfig, load_llm
    from bridge.model import VideoLLM

    device = check_device(device)
    adapter, config = load_adapter(folder)
    if loaded is not None:
        if loaded.width != adapter.cfg.llm_width:
            raise ConfigError(f"{folder}: the adapter projects to width {adapter.cfg.llm_width}, the LLM "
                              f"{loaded.source} has width {loaded.width}")
        return VideoLLM(adapter, loaded), config
    llm_cfg = LLMConfig(**{**LLMConfig().to_dict(), **config.get("llm", {})})
    if llm is not None:
        llm_cfg.path, llm_cfg.gguf_file, llm_cfg.template = os.fspath(llm), None, "auto"
    else:
        llm_cfg.template = config.get("template", llm_cfg.template)
        if llm_cfg.path != EMBEDDED and not Path(llm_cfg.path).exists():
            _log.warning("note: the LLM recorded in %s (%s) is not on this machine: using the embedded SmolLM2 "
                         "instead (pass --llm to choose)", folder / CONFIG_FILE, llm_cfg.path)
            llm_cfg.path, llm_cfg.gguf_file = EMBEDDED, None
    if quantization is not None:
        llm_cfg.quantization = quantization
    loaded = load_llm(llm_cfg, device=device, width=adapter.cfg.llm_width)
    if loaded.width != adapter.cfg.llm_width:
        raise ConfigError(f"{folder}: the adapter projects to width {adapter.cfg.llm_width}, the LLM "
                          f"{loaded.source} has width {loaded.width}; use the LLM it was trained with")
    return VideoLLM(adapter, loaded), config


def read_checkpoint(path: str | os.PathLike,
                    advice: str = "") -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, str]]:
    """``(adapter state dict, optimizer tensors "optim.<i>.<name>", metadata)`` of a training run's checkpoint
    (:data:`CHECKPOINT`; metadata ``step``, ``losses``, ``adapter_config``, ``meta``); an unreadable one is a
    :class:`DataError` whose reason ends with ``advice``."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    except (SafetensorError, OSError) as err:
        raise DataError(path, f"unreadable checkpoint ({' '.join(str(err).split())}){advice}") from None
    state = {k.removeprefix("adapter."): v for k, v in tensors.items() if k.startswith("adapter.")}
    return state, {k: v for k, v in tensors.items() if not k.startswith("adapter.")}, metadata


def export_run(run: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the export of a training run's last checkpoint (``RUN/checkpoints/last.safetensors``) to ``out``.

    An instruction adapter's tokenizer comes from ``RUN/checkpoints/qformer_tokenizer`` (written by training), or
    else from the BERT folder its config names."""
    path = Path(run) / CHECKPOINT
    state, _, metadata = read_checkpoint(path)
    cfg = AdapterConfig.from_dict(loads(metadata.get("adapter_config", "{}"), path))
    saved = path.parent / TOKENIZER_DIR
    tokenizer = load_qformer_tokenizer(saved) if cfg.instruction and saved.is_dir() else None
    adapter = QFormerAdapter(cfg, tokenizer=tokenizer)
    adapter.load_state_dict(state)
    meta = loads(metadata.get("meta", "{}"), path)
    return write_adapter_export(out, adapter, **meta, source={"run": Path(run).name, "step": int(metadata["step"])})
