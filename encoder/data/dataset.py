"""Torch datasets of sampled clips, and a resumable, rank-aware batch sampler.

The sampler yields batches of ``(index, epoch)`` pairs. The dataset seeds every random choice of an item from
``(seed, epoch, index, attempt)``, so an item's frames and augmentation do not depend on worker scheduling, on
the number of processes, or on whether the run was resumed: a resumed run sees exactly the same batches.

A clip that cannot be read (:class:`~common.errors.VideoReadError`) is counted and replaced by another,
deterministically drawn, clip; :meth:`ClipDataset.take_skipped` reports and resets the count (shared across
DataLoader workers).
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from common.errors import VideoReadError
from encoder.data.sampling import check_jitter, segment_frame_indices
from encoder.data.splits import Sample
from encoder.data.video import read_frames

log = logging.getLogger(__name__)

#: ``transform(frames, generator) -> dict of tensors``; ``frames`` is uint8 ``(K, C, H, W)``.
ClipTransform = Callable[[torch.Tensor, torch.Generator], dict]

MAX_ATTEMPTS = 20


class ClipDataset(Dataset):
    """Reads K frames per clip (one per equal segment) and applies ``transform``.

    Args:
        items: the clips (path, label and optional trim in seconds).
        num_frames: K, frames sampled per clip.
        transform: turns uint8 frames ``(K, C, H, W)`` into named views.
        train: random frame inside each segment (else the centre, or view ``v`` of ``temporal_views``).
        seed: base seed of all per-item randomness.
        short_side: resize frames on reading so that the short side has this many pixels.
        temporal_views: evaluation only: each index ``i`` of the dataset is view ``i % temporal_views`` of
            clip ``i // temporal_views``.
        jitter: training only: each segment's frame is drawn from the middle ``jitter`` share of the segment
            (1: anywhere in it; 0: its centre), see :func:`~encoder.data.sampling.segment_frame_indices`.
        cache_mb: keep each clip's decoded (and resized) frames in memory after its first read, until this many
            MiB are held (0: no cache). Each process that reads (main or loader worker) holds its own cache, so a
            run holds up to ``cache_mb`` per loader process. A cached clip gives exactly the frames a read from
            disk gives, so the cache changes speed only; clips beyond the limit are read from disk every time.
            Where the sampled frames of a clip never change (evaluation, or training with ``jitter=0``), only
            those K frames are read and kept (per temporal view), not the whole clip: SynGym's 1,782 train clips
            then take 167 MiB instead of 834 MiB, and their first reads decode less (bench/clip_cache.py).
    """

    def __init__(
        self,
        items: Sequence[Sample],
        num_frames: int,
        transform: ClipTransform,
        *,
        train: bool,
        seed: int = 0,
        short_side: int | None = None,
        temporal_views: int = 1,
        jitter: float = 1.0,
        cache_mb: float = 0,
    ):
        if not items:
            raise ValueError("a dataset needs at least one clip")
        check_jitter(jitter)
        if not (cache_mb >= 0 and math.isfinite(cache_mb)):
            raise ValueError(f"cache_mb={cache_mb}: must be a finite number >= 0")
        self.items = list(items)
        self.num_frames = num_frames
        self.transform = transform
        self.train = train
        self.seed = seed
        self.short_side = short_side
        self.jitter = jitter
        self.temporal_views = 1 if train else temporal_views
        self._skipped = mp.Value("i", 0)
        self._cache_limit = int(cache_mb * 2**20)  # bytes of decoded frames each process may keep
        # clip index -> all its frames (T, C, H, W) uint8; with fixed sampling (clip index, view) -> (the clip's
        # frame count, its K sampled frames)
        self._cache: dict = {}
        self._fixed = not train or jitter == 0.0  # each clip's (and view's) sampled frames never change
        self._cache_bytes = 0
        self._cache_full = self._cache_limit == 0  # once a clip did not fit, only the sampled frames are read

    def __getstate__(self) -> dict:  # a spawned worker starts with an empty cache of its own
        state = self.__dict__.copy()
        state.update(_cache={}, _cache_bytes=0, _cache_full=self._cache_limit == 0)
        return state

    def __len__(self) -> int:
        return len(self.items) * self.temporal_views

    def take_skipped(self) -> int:
        """Unreadable clips met since the last call (all workers together); resets the count."""
        with self._skipped.get_lock():
            n, self._skipped.value = self._skipped.value, 0
        return n

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        for attempt in range(MAX_ATTEMPTS):
            rng = np.random.default_rng([self.seed, epoch, index, attempt])
            clip_index, view = divmod(index, self.temporal_views)
            item = self.items[clip_index]
            try:
                frames = self._read(clip_index, item, rng, view)
            except VideoReadError as err:
                with self._skipped.get_lock():
                    self._skipped.value += 1
                log.warning("skipping unreadable clip: %s", err)
                if not self.train:
                    raise  # evaluation must not silently change the test set
                index = int(rng.integers(len(self)))
                continue
            seed = int(rng.integers(2**63 - 1))
            generator = torch.Generator().manual_seed(seed)
            with torch.random.fork_rng(devices=[]):  # torchvision's transforms draw from the global RNG
                # the CPU generator only: torch.manual_seed also queues a seed for every accelerator backend, each
                # with a formatted stack trace (about 1 ms at a data loader's stack depth; a cached item takes ~4 ms)
                torch.default_generator.manual_seed(seed)
                out = self.transform(frames, generator)
            out["label"] = item.label
            out["index"] = clip_index
            return out
        raise RuntimeError(f"{MAX_ATTEMPTS} unreadable clips in a row; last: {item.path}")

    def _read(self, clip_index: int, item: Sample, rng: np.random.Generator, view: int) -> torch.Tensor:
        def indices(n: int) -> np.ndarray:
            return segment_frame_indices(
                n, self.num_frames, train=self.train, rng=rng, views=self.temporal_views, view=view,
                jitter=self.jitter,
            )

        if self._fixed:
            return self._read_fixed(clip_index, item, view, indices)
        if (clip := self._cache.get(clip_index)) is not None:
            return clip[torch.from_numpy(indices(len(clip)))]
        if not self._cache_full:  # decode the whole clip once; later reads index it
            clip = _chw(read_frames(item.path, None, start=item.start, end=item.end, short_side=self.short_side))
            self._store(clip_index, clip, clip.numel())
            return clip[torch.from_numpy(indices(len(clip)))]
        return _chw(read_frames(item.path, indices, start=item.start, end=item.end, short_side=self.short_side))

    def _read_fixed(self, clip_index: int, item: Sample, view: int,
                    indices: Callable[[int], np.ndarray]) -> torch.Tensor:
        """:meth:`_read` where the sampled frames never change: the K frames themselves are read and cached (a
        copy is returned, so a transform that writes into its input cannot change the cache)."""
        if (hit := self._cache.get((clip_index, view))) is not None:
            count, frames = hit
            indices(count)  # the item's rng advances as on a read from disk
            return frames.clone()
        counted = []

        def sampled(count: int) -> np.ndarray:
            counted.append(count)
            return indices(count)

        frames = _chw(read_frames(item.path, sampled, start=item.start, end=item.end, short_side=self.short_side))
        return frames.clone() if self._store((clip_index, view), (counted[0], frames), frames.numel()) else frames

    def _store(self, key, value, size: int) -> bool:
        """Cache ``value`` (``size`` bytes) under ``key`` if it fits; the first value that does not fit ends the
        caching. Returns whether it was kept."""
        if self._cache_full:
            return False
        if self._cache_bytes + size > self._cache_limit:
            self._cache_full = True
            return False
        self._cache[key] = value
        self._cache_bytes += size
        return True


def _chw(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(T, H, W, C)`` frames as a contiguous ``(T, C, H, W)`` tensor."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()


class EpochBatchSampler(Sampler):
    """Endless batches of ``(index, epoch)`` for one rank, reshuffled every epoch from ``seed``.

    Every epoch is a permutation of ``range(n)`` cut into global batches of ``batch_size * world_size``
    (the last incomplete batch is dropped, unless the whole set is smaller than one batch, in which case
    indices wrap around); rank ``r`` takes its contiguous share of each global batch. ``start_batch`` skips
    the global batches already consumed (for resuming).
    """

    def __init__(
        self, n: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1, start_batch: int = 0
    ):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        return max(1, self.n // self.global_batch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        need = self.batches_per_epoch * self.global_batch
        return np.resize(order, need) if need > self.n else order[:need]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        b = self.start_batch
        while True:
            epoch, k = divmod(b, self.batches_per_epoch)
            order = self.epoch_order(epoch)
            lo = k * self.global_batch + self.rank * self.batch_size
            yield [(int(i), epoch) for i in order[lo : lo + self.batch_size]]
            b += 1


def collate(batch: list[dict]) -> dict:
    """Stack the tensors of a list of items; labels and indices become LongTensors."""
    out: dict = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)
    return out
