"""Small pieces of tensor file handling the bridge's modules share: dtype names, content digests, state-dict files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["DTYPES", "sha256_files", "read_state_file"]

# The dtype names a config may give: the feature cache's stored dtype, the LLM's (compute) dtype.
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def sha256_files(paths: Iterable[str | os.PathLike], digest=None) -> str:
    """Hex SHA-256 of the files' bytes in order, read in 1 MiB blocks; ``digest``: a ``hashlib`` object that has
    already taken something else to hash first (None: a new one)."""
    digest = hashlib.sha256() if digest is None else digest
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_state_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """A ``.safetensors`` file, or else a ``torch.save`` file read with ``weights_only``, on the CPU (read errors
    propagate: each caller words its own)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(os.fspath(path))
    return torch.load(path, map_location="cpu", weights_only=True)
