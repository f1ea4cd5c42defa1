"""Adapter exports: a folder anyone can load with the bridge alone (``config.json`` + ``adapter.safetensors``).

``config.json``::

    {"format": "sefar-bridge-adapter", "format_version": 1,
     "adapter": {...AdapterConfig...},            # rebuilds the Q-Former without its BERT folder
     "llm": {...LLMConfig...},                    # the frozen LLM it was trained with (path as given)
     "template": "chat" | "vicuna_v1.1",
     "features": {"kind": "sefar" | "frames", "source": "<encoder export or model name>",
                  "layout": [[frame indices of element 0], ...], "use_cls": true},
     "prompt": {"question": "...", "objective": "name" | "letter"},
     "source": {"run": "<run folder>", "step": 300}}

``adapter.safetensors`` holds the :class:`~bridge.adapter.QFormerAdapter` state dict (the only trained weights).
An adapter with the instruction option (``"instruction": true`` in ``adapter``) also needs its Q-Former's BERT
tokenizer: the export saves it in ``qformer_tokenizer/`` and :func:`load_adapter` restores it from there.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from bridge.adapter import AdapterConfig, QFormerAdapter
from bridge.bert import load_qformer_tokenizer
from common.errors import DataError
from common.textio import read_json_object, write_text_atomic
from encoder.export import save_safetensors

__all__ = ["FORMAT", "CONFIG_FILE", "WEIGHTS_FILE", "write_adapter_export", "read_adapter_config",
           "TOKENIZER_DIR", "write_qformer_tokenizer", "load_adapter", "load_video_llm", "is_adapter_export",
           "CHECKPOINT", "read_checkpoint", "export_run"]

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
    save_safetensors(out / WEIGHTS_FILE, adapter.state_dict())
    write_text_atomic(out / CONFIG_FILE, json.dumps(config, indent=1) + "\n")
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


def load_adapter(folder: str | os.PathLike, device: str = "cpu") -> tuple[QFormerAdapter, dict]:
    """``(adapter in eval mode, config)`` of an export; the state dict must match exactly. An instruction adapter
    gets the export's own tokenizer (``qformer_tokenizer/``), not its BERT folder's."""
    folder = Path(folder)
    config = read_adapter_config(folder)
    cfg = AdapterConfig.from_dict(config["adapter"])
    tokenizer = None
    if cfg.instruction:
        tokenizer = load_qformer_tokenizer(folder / TOKENIZER_DIR, "missing: an adapter with adapter.instruction=true "
                                           "needs its Q-Former tokenizer here (write the export again with "
                                           "`sefar bridge export RUN OUT`)")
    adapter = QFormerAdapter(cfg, tokenizer=tokenizer)
    weights = folder / WEIGHTS_FILE
    try:
        state = load_file(os.fspath(weights))
    except (SafetensorError, OSError) as err:
        raise DataError(weights, f"unreadable adapter weights ({' '.join(str(err).split())})") from None
    own = adapter.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise DataError(weights, f"does not match the adapter config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    adapter.load_state_dict(state)
    return adapter.to(device).eval(), config


def load_video_llm(folder: str | os.PathLike, llm: str | os.PathLike | None = None, device: str = "cpu",
                   quantization: str | None = None, loaded=None):
    """``(VideoLLM, config)``: the export's adapter on its LLM.

    ``llm``: a folder or GGUF file to use instead of the recorded one; None -> the recorded LLM, or the embedded
    SmolLM2 when the recorded path is not on this machine. ``loaded``: an already loaded
    :class:`~bridge.llm.LoadedLLM` to reuse (drivers that score several adapters on one LLM). The LLM's width
    must be the adapter's.
    """
    from common.errors import ConfigError
    from bridge.llm import EMBEDDED, LLMConfig, load_llm
    from bridge.model import VideoLLM

    adapter, config = load_adapter(folder, device=device)
    if loaded is not None:
        if loaded.width != adapter.cfg.llm_width:
            raise ConfigError(f"{folder}: the adapter projects to width {adapter.cfg.llm_width}, the LLM "
                              f"{loaded.source} has width {loaded.width}")
        return VideoLLM(adapter.to(loaded.device), loaded), config
    llm_cfg = LLMConfig(**{**LLMConfig().to_dict(), **config.get("llm", {})})
    if llm is not None:
        llm_cfg.path, llm_cfg.gguf_file, llm_cfg.template = os.fspath(llm), None, "auto"
    else:
        llm_cfg.template = config.get("template", llm_cfg.template)
        if llm_cfg.path != EMBEDDED and not Path(llm_cfg.path).exists():
            llm_cfg.path, llm_cfg.gguf_file = EMBEDDED, None
    if quantization is not None:
        llm_cfg.quantization = quantization
    loaded = load_llm(llm_cfg, device=device)
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
    cfg = AdapterConfig.from_dict(json.loads(metadata["adapter_config"]))
    saved = path.parent / TOKENIZER_DIR
    tokenizer = load_qformer_tokenizer(saved) if cfg.instruction and saved.is_dir() else None
    adapter = QFormerAdapter(cfg, tokenizer=tokenizer)
    adapter.load_state_dict(state)
    meta = json.loads(metadata["meta"])
    return write_adapter_export(out, adapter, **meta, source={"run": Path(run).name, "step": int(metadata["step"])})
