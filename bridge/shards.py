"""Evaluation over several processes (``accelerate launch``, ``torchrun``): disjoint shares, one merged result.

The questions are cut into batches first and the batches dealt out to the processes in turn, so a question is
scored in the same batch (hence to the same bits) whatever the number of processes; every process gets every
result back (:meth:`Shards.map`), and only the main process writes files (:attr:`Shards.main`). One process
(plain ``python``, no ``WORLD_SIZE`` above 1) needs no process group and imports nothing more.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

__all__ = ["Shards"]


class Shards:
    """The processes of this run: ``rank`` of ``world``."""

    def __init__(self) -> None:
        self.state = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            self.state = PartialState(cpu=not torch.cuda.is_available())
        self.rank = self.state.process_index if self.state else 0
        self.world = self.state.num_processes if self.state else 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def map(self, items: Sequence, batch_size: int, fn: Callable[[list], list], desc: str = "") -> list:
        """``fn`` over ``items`` in batches of ``batch_size`` (one result per item), this process's batches only;
        the results of every process, in the order of ``items``."""
        batches = [list(items[i: i + batch_size]) for i in range(0, len(items), batch_size)]
        mine = {}
        with tqdm(total=len(items), desc=desc, unit="q", disable=not self.main) as bar:
            for i in range(self.rank, len(batches), self.world):
                mine[i] = fn(batches[i])
                if len(mine[i]) != len(batches[i]):
                    raise RuntimeError(f"{desc}: {len(mine[i])} results for a batch of {len(batches[i])}")
                bar.update(len(batches[i]) * self.world)
        if self.state is not None:
            from accelerate.utils import gather_object

            mine = {k: v for part in gather_object([mine]) for k, v in part.items()}
        return [r for i in range(len(batches)) for r in mine[i]]

    def share(self, value):
        """The main process's ``value`` in every process (after it is done)."""
        if self.state is None:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]
