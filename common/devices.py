"""What the machine computes natively, for the configs' ``auto`` dtypes. Imports torch only when asked."""

from __future__ import annotations

import logging

__all__ = ["native_bf16", "resolve_auto_dtype"]

_logger = logging.getLogger(__name__)


def native_bf16() -> bool:
    """Whether this machine computes bfloat16 natively: a CUDA GPU with bf16 units (not the emulation that
    ``torch.cuda.is_bf16_supported`` counts by default) or, without a GPU, a CPU with AVX512-BF16 or AMX
    instructions. Elsewhere bf16 is emulated: on a 2-core AVX2 CPU a bf16 convolution stem runs 8.6x and a bf16
    linear layer 7x slower than in float32 (oneDNN also runs bf16 on plain AVX512, by conversion, without the gain)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    cpu = torch.cpu
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # a build without these queries
        return False


def resolve_auto_dtype(name: str, what: str) -> str:
    """``name`` itself, or for ``"auto"`` ``"bfloat16"`` where :func:`native_bf16` and ``"float32"`` elsewhere
    (logged once per call with ``what``, the config key)."""
    if name != "auto":
        return name
    resolved = "bfloat16" if native_bf16() else "float32"
    _logger.info("%s=auto: %s on this machine", what, resolved)
    return resolved
