"""Which torch device a command runs on: a requested device is checked, never assumed.

``--device cuda`` on a machine without CUDA (or ``cuda:3`` with two GPUs) is a :class:`ConfigError` that the CLI
prints as one ``error:`` line, before anything is loaded. Under ``accelerate launch`` / ``torchrun`` (several
processes) ``cuda`` means each process's own GPU, ``cuda:<LOCAL_RANK>``.
"""

from __future__ import annotations

import os

import torch

from common.errors import ConfigError

__all__ = ["check_device"]


def check_device(requested: str | torch.device | None = None, flag: str = "--device") -> torch.device:
    """``requested`` (None: the CPU) as a :class:`torch.device` that this machine has."""
    if requested is None:
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{flag} {requested!r} is not a torch device: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None) if device.type != "mps" else torch.backends.mps
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        why = " (this torch is built without CUDA)" if device.type == "cuda" and torch.version.cuda is None else ""
        raise ConfigError(f"{flag} {requested}: no {device.type} device is available on this machine{why}; "
                          f"use {flag} cpu")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is None and device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % count)
    if device.index is not None and device.index >= count:
        raise ConfigError(f"{flag} {requested}: this machine has {count} {device.type} device(s), "
                          f"numbered from 0")
    return device
