"""Process-group teardown shared by every entry point that may run under ``accelerate launch``."""

from __future__ import annotations

import sys

__all__ = ["release_process_group"]


def release_process_group() -> None:
    """Destroy the default ``torch.distributed`` process group if this process started one.

    Left to interpreter exit, gloo's background threads can be torn down in the wrong order and abort the process
    (``terminate called without an active exception``, SIGABRT) after all its work is done, which fails the whole
    launch. Never imports torch: a command that did not use it has nothing to release.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
