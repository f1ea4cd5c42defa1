"""How much GPU memory adapter training needs, predicted from shapes alone (no weights are read).

The frozen LLM is built on PyTorch's ``meta`` device from its ``config.json`` (or a named preset such as
``vicuna-7b``) to count its parameters exactly; the rest is arithmetic:

* **LLM weights**: every parameter in the compute dtype; with bitsandbytes ``8bit`` the decoder's linear weights
  take 1 byte each (+ a float32 scale per output row), with ``4bit`` (NF4) half a byte each (+ a float32 absmax
  per block of 64); embeddings, norms and the output layer stay in the compute dtype, as transformers keeps them.
* **adapter**: trainable float32 parameters, their gradients and AdamW's two moments (16 bytes a parameter).
* **activations** kept for the backward pass into the adapter's output, per token and decoder layer. With the
  LLM's weights frozen, autograd keeps no input of a linear layer, only what attention, SiLU and RMSNorm need:
  ``4 H + 3 I + 2 Hkv`` values in the compute dtype (``H`` hidden, ``I`` intermediate, ``Hkv`` key/value width),
  the two RMSNorm inputs again in float32 where the dtype is narrower, and a float32 log-sum-exp per head
  (fused attention). Measured exactly on small LLaMA shapes (``tests/test_bridge_memory.py``). With gradient
  checkpointing a layer keeps only its input (``H`` values a token) and one layer at a time is recomputed.
* **answer logits** (float32, the answer tokens only: the loss never builds logits for the prompt) and the shared
  prompt prefix's KV cache (no gradient), repeated for the batch.

A plan places this on ``gpus`` GPUs: ``data`` parallel (every GPU holds the whole LLM and its share of the
global batch) or ``device_map`` (the LLM's layers spread over the GPUs, the whole batch on each in turn).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from common.errors import ConfigError, DataError

__all__ = ["LLMShape", "PRESETS", "llm_shape", "count_llm_params", "adapter_params", "MemoryPlan", "plan_memory"]

GiB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Public LLaMA-family shapes (config.json values), for planning before any file is at hand.
PRESETS = {
    "vicuna-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000),
    "vicuna-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                       num_key_value_heads=40, vocab_size=32000),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
}
CUDA_CONTEXT_BYTES = int(0.5 * GiB)  # CUDA context + allocator slack, added per GPU
NF4_BLOCK = 64


@dataclass(frozen=True)
class LLMShape:
    """The numbers of a LLaMA-family config that memory depends on."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool = False

    @property
    def kv_width(self) -> int:
        return self.hidden_size * self.num_key_value_heads // self.num_attention_heads

    def transformers_config(self):
        from transformers import LlamaConfig

        fields = {k: v for k, v in asdict(self).items() if k != "name"}
        return LlamaConfig(**fields)


def llm_shape(source: str | os.PathLike) -> LLMShape:
    """The shape of a preset name (``vicuna-7b``, ``vicuna-13b``, ``smollm2-135m``) or of a model folder's
    ``config.json`` (LLaMA-family); a path whose name contains a preset's name falls back to that preset when it
    has no ``config.json`` yet (the plan before the download)."""
    text = os.fspath(source)
    path = Path(text)
    config = path / "config.json" if path.is_dir() else path if path.suffix == ".json" else None
    if config is not None and config.is_file():
        from common.jsonio import read_json_object

        data = read_json_object(config)
        try:
            fields = {k: int(data[k]) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                "num_attention_heads", "vocab_size")}
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(config, f"not a LLaMA-family config (missing or bad {err})") from None
        fields["num_key_value_heads"] = int(data.get("num_key_value_heads") or fields["num_attention_heads"])
        return LLMShape(path.name, **fields, tie_word_embeddings=bool(data.get("tie_word_embeddings", False)))
    key = next((k for k in PRESETS if k in text.lower().replace("_", "-").replace("-v1.1", "")), None)
    if key is None:
        raise ConfigError(f"{text}: no config.json there and no preset in its name; use one of {', '.join(PRESETS)} "
                          "or a folder with the model's config.json")
    return LLMShape(key, **PRESETS[key])


def count_llm_params(shape: LLMShape) -> dict[str, int]:
    """Parameters of the LLM built on the ``meta`` device: ``linear`` (the decoder layers' projection weights,
    what bitsandbytes quantizes), ``other`` (embeddings, norms, output layer) and ``total``."""
    import torch
    from torch import nn
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(shape.transformers_config())
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, nn.Linear) and ".layers." in f".{name}")
    total = sum(p.numel() for p in model.parameters())
    return {"linear": linear, "other": total - linear, "total": total}


BERT_BASE = {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072, "num_layers": 12,
             "vocab_size": 30522, "max_position_embeddings": 512}


def adapter_params(cfg) -> int:
    """Trainable parameters of the :class:`bridge.adapter.AdapterConfig` ``cfg``, counted on the ``meta`` device.

    The Q-Former's sizes come from its BERT folder where it exists; a folder named like ``bert-base-uncased``
    that is not there yet is taken as BERT-base (the plan before the download)."""
    import torch
    from dataclasses import replace

    from bridge.adapter import QFormerAdapter

    if cfg.hidden_size is None and cfg.qformer not in ("embedded", "random") and not Path(cfg.qformer).is_dir():
        if "bert-base" not in Path(cfg.qformer).name:
            raise ConfigError(f"adapter.qformer={cfg.qformer}: no such BERT folder, and its name says no known size")
        layers = BERT_BASE["num_layers"] if cfg.num_layers is None else min(cfg.num_layers, BERT_BASE["num_layers"])
        cfg = replace(cfg, qformer="random", **(BERT_BASE | {"num_layers": layers}))
    if cfg.instruction and cfg.vocab_size is None:
        cfg = replace(cfg, instruction=False)  # the text embeddings are added below, without a tokenizer
        extra = (BERT_BASE["vocab_size"] + BERT_BASE["max_position_embeddings"]) * (cfg.hidden_size or 768)
    else:
        extra = 0
    with torch.device("meta"):
        adapter = QFormerAdapter(cfg)
    return sum(p.numel() for p in adapter.parameters() if p.requires_grad) + extra


@dataclass
class MemoryPlan:
    """Predicted peak bytes per GPU, by component (``per_gpu`` sums them) for one placement."""

    llm: str
    gpus: int
    placement: str
    dtype: str
    quantization: str | None
    batch_per_gpu: int
    checkpointing: bool
    weights: int
    adapter: int
    activations: int
    transient: int
    context: int

    @property
    def per_gpu(self) -> int:
        return self.weights + self.adapter + self.activations + self.transient + self.context

    def row(self) -> dict:
        gib = lambda b: round(b / GiB, 2)  # noqa: E731
        return {"llm": self.llm, "gpus": self.gpus, "placement": self.placement,
                "weights": self.quantization or self.dtype, "batch/GPU": self.batch_per_gpu,
                "checkpointing": "on" if self.checkpointing else "off", "weights GiB": gib(self.weights),
                "adapter GiB": gib(self.adapter), "activations GiB": gib(self.activations + self.transient),
                "peak GiB/GPU": gib(self.per_gpu)}


def weight_bytes(counts: dict[str, int], shape: LLMShape, dtype: str, quantization: str | None) -> int:
    b = DTYPE_BYTES[dtype]
    if quantization is None:
        return counts["total"] * b
    rows = shape.num_hidden_layers * (shape.hidden_size + 2 * shape.kv_width + shape.hidden_size
                                      + 2 * shape.intermediate_size + shape.hidden_size)
    if quantization == "8bit":
        quantized = counts["linear"] + 4 * rows
    elif quantization == "4bit":
        quantized = counts["linear"] // 2 + 4 * counts["linear"] // NF4_BLOCK
    else:
        raise ConfigError(f"quantization={quantization!r}: use null, 8bit or 4bit")
    return quantized + counts["other"] * b


def activation_bytes_per_token_layer(shape: LLMShape, dtype: str) -> int:
    """Bytes autograd keeps per token in one frozen decoder layer (gradient flowing to the input)."""
    b = DTYPE_BYTES[dtype]
    h, i, kv, heads = shape.hidden_size, shape.intermediate_size, shape.kv_width, shape.num_attention_heads
    return b * (4 * h + 3 * i + 2 * kv) + (4 - b) * 2 * h + 6 * heads


def plan_memory(shape: LLMShape, *, dtype: str = "bfloat16", quantization: str | None = None, batch: int = 16,
                prompt_tokens: int = 96, prefix_tokens: int = 40, answer_tokens: int = 12, num_queries: int = 32,
                checkpointing: bool = False, adapter_parameters: int = 0, gpus: int = 1, placement: str = "data",
                counts: dict[str, int] | None = None, context: int = CUDA_CONTEXT_BYTES) -> MemoryPlan:
    """Predicted peak memory per GPU of one training step.

    ``batch`` is the global batch; ``prompt_tokens`` the prompt after the shared prefix (video queries
    included), ``prefix_tokens`` the shared prefix, ``answer_tokens`` the answer. ``placement``: ``data``
    (each GPU a full copy, ``ceil(batch / gpus)`` samples each) or ``device_map`` (the LLM's layers split over
    the GPUs; the GPU with the most layers is reported).
    """
    if placement not in ("data", "device_map"):
        raise ConfigError(f"placement={placement!r}: use data or device_map")
    counts = counts or count_llm_params(shape)
    b = DTYPE_BYTES[dtype]
    weights = weight_bytes(counts, shape, dtype, quantization)
    layers = shape.num_hidden_layers
    if placement == "data":
        per_gpu_batch, layer_share, weight_share = math.ceil(batch / gpus), layers, weights
    else:
        per_gpu_batch, layer_share = batch, math.ceil(layers / gpus)
        weight_share = math.ceil(weights * layer_share / layers) if gpus > 1 else weights
    tokens = per_gpu_batch * (prompt_tokens + answer_tokens)
    per_layer = activation_bytes_per_token_layer(shape, dtype)
    if checkpointing:
        kept = layer_share * tokens * shape.hidden_size * b
        recompute = tokens * per_layer  # one layer's activations while it is recomputed
    else:
        kept, recompute = layer_share * tokens * per_layer, 0
    kv_cache = 2 * layer_share * per_gpu_batch * prefix_tokens * shape.kv_width * b
    logits = 2 * per_gpu_batch * answer_tokens * shape.vocab_size * 4  # float32 logits and their softmax
    final = tokens * shape.hidden_size * (b + 4)  # the last norm's input (float32) and output
    # Backward through one layer holds the gradients of its projections' outputs at once.
    backward = tokens * (3 * shape.intermediate_size + 4 * shape.hidden_size) * b
    adapter = 16 * adapter_parameters
    return MemoryPlan(shape.name, gpus, placement, dtype, quantization, per_gpu_batch, checkpointing,
                      weight_share, adapter, kept + kv_cache + final, max(recompute, logits) + backward, context)
