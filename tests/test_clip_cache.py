"""The in-memory clip cache of ClipDataset (``data.cache_mb``): same items as reading from disk, bounded, per process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from videos import write_video

from encoder.data.dataset import ClipDataset
from encoder.data.splits import Sample


def _keep(frames, generator):
    return {"video": frames, "noise": torch.rand(2, generator=generator)}


def _samples(tmp_path, n=3):
    out = []
    for i in range(n):
        path = write_video(tmp_path / f"c{i}.mp4", n=37 + 5 * i, size=(48, 64))
        out.append(Sample(path=str(path), label=i, start=0.2 if i == 1 else None, end=3.5 if i == 1 else None))
    return out


@pytest.mark.parametrize("train, jitter", [(True, 1.0), (True, 0.5), (True, 0.0), (False, 1.0)])
def test_cached_items_equal_disk_items(tmp_path, train, jitter):
    samples = _samples(tmp_path)
    kw = dict(train=train, seed=3, short_side=40, jitter=jitter, temporal_views=1 if train else 2)
    disk = ClipDataset(samples, 8, _keep, **kw)
    cached = ClipDataset(samples, 8, _keep, cache_mb=64, **kw)
    keys = [(i, e) for e in range(3) for i in range(len(disk))]
    for key in keys + keys:  # the second pass reads from the cache
        a, b = disk[key], cached[key]
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(torch.as_tensor(a[name]), torch.as_tensor(b[name])), (key, name)
    fixed = not train or jitter == 0  # then only the sampled frames are kept, per clip and temporal view
    assert len(cached._cache) == len(samples) * (1 if train else 2)
    held = sum((c[1] if fixed else c).numel() for c in cached._cache.values())
    assert cached._cache_bytes == held
    assert held == (len(cached._cache) * 8 * 3 * 40 * 53 if fixed else sum(
        n * 3 * 40 * 53 for n in (37, 33, 47)))  # clip 1 trimmed to 0.2-3.5 s: 33 of its 42 frames
    assert cached[keys[0]]["video"].shape == (8, 3, 40, 53)


def test_fixed_sampling_reads_only_the_sampled_frames(tmp_path, monkeypatch):
    """Centre frames in training (jitter 0) and evaluation: the K frames are read from disk once, and kept."""
    import encoder.data.dataset as dataset

    asked = []
    real = dataset.read_frames

    def spy(path, indices, **kw):
        frames = real(path, indices, **kw)
        asked.append(len(frames))
        return frames

    monkeypatch.setattr(dataset, "read_frames", spy)
    samples = _samples(tmp_path, n=2)
    ds = ClipDataset(samples, 8, _keep, train=True, jitter=0.0, cache_mb=64)
    for epoch in range(3):
        for i in range(2):
            ds[(i, epoch)]
    assert asked == [8, 8]  # one read of 8 frames per clip, none after
    whole = ClipDataset(samples, 8, _keep, train=True, jitter=1.0, cache_mb=64)
    whole[(0, 0)]
    assert asked[-1] == 37  # random frames: the whole clip is kept


def test_a_cached_clip_is_not_read_again(tmp_path):
    samples = _samples(tmp_path, n=2)
    ds = ClipDataset(samples, 8, _keep, train=True, cache_mb=64)
    first = ds[(0, 0)]["video"]
    for s in samples:
        Path(s.path).unlink()
    assert torch.equal(ds[(0, 0)]["video"], first)  # from memory
    with pytest.raises(RuntimeError, match="unreadable clips in a row"):  # clip 1 was never read
        ClipDataset(samples[1:], 8, _keep, train=True, cache_mb=64)[(0, 0)]


def test_the_cache_stops_at_its_limit(tmp_path):
    samples = _samples(tmp_path)
    one_clip = 37 * 3 * 48 * 64  # bytes of clip 0's frames
    ds = ClipDataset(samples, 8, _keep, train=True, cache_mb=1.5 * one_clip / 2**20)
    ds[(0, 0)]
    assert list(ds._cache) == [0] and ds._cache_bytes == one_clip and not ds._cache_full
    ds[(2, 0)]  # 47 frames: does not fit, and nothing more is kept
    assert list(ds._cache) == [0] and ds._cache_full
    ds[(1, 0)]
    assert list(ds._cache) == [0] and ds._cache_bytes == one_clip
    none = ClipDataset(samples, 8, _keep, train=True)
    none[(0, 0)]
    assert none._cache == {}


@pytest.mark.parametrize("fill", [1, 3])  # one clip held; or full after a clip that did not fit
def test_a_spawned_worker_starts_empty_with_the_whole_limit(tmp_path, fill):
    samples = _samples(tmp_path)
    limit = 1.5 * 37 * 3 * 48 * 64 / 2**20
    ds = ClipDataset(samples, 8, _keep, train=True, cache_mb=limit)
    for i in range(fill):
        ds[(i, 0)]
    assert ds._cache and ds._cache_full == (fill == 3)
    worker = ClipDataset.__new__(ClipDataset)  # what a spawned loader worker rebuilds from the pickled state
    worker.__dict__.update(ds.__getstate__())
    assert worker._cache == {} and worker._cache_bytes == 0 and not worker._cache_full
    assert worker._cache_limit == ds._cache_limit == int(limit * 2**20)
    worker[(0, 0)]
    assert list(worker._cache) == [0]
    assert ds._cache and ds._cache_full == (fill == 3)  # the dataset itself keeps its cache


def test_loader_workers_give_the_batches_of_a_dataset_without_cache(tmp_path):
    from torch.utils.data import DataLoader

    from encoder.data.dataset import EpochBatchSampler, collate

    samples = _samples(tmp_path)

    def batches(cache_mb):
        ds = ClipDataset(samples, 8, _keep, train=True, seed=1, cache_mb=cache_mb)
        loader = DataLoader(ds, batch_sampler=EpochBatchSampler(len(ds), 2, seed=0), num_workers=2,
                            collate_fn=collate)
        it = iter(loader)
        return [next(it) for _ in range(5)]  # 5 batches of 2 over 3 clips: every clip several times

    for a, b in zip(batches(0), batches(64)):
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_bad_limits_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="cache_mb"):
        ClipDataset(_samples(tmp_path, n=1), 8, _keep, train=True, cache_mb=bad)


@pytest.mark.parametrize("jitter", [0.0, 1.0])
def test_a_transform_writing_into_its_frames_does_not_change_the_cache(tmp_path, jitter):
    def scribble(frames, generator):
        out = {"video": frames.clone()}
        frames.zero_()  # a transform that works in place
        return out

    samples = _samples(tmp_path, n=1)
    cached = ClipDataset(samples, 8, scribble, train=True, jitter=jitter, cache_mb=64)
    disk = ClipDataset(samples, 8, scribble, train=True, jitter=jitter)
    for epoch in range(3):  # the later ones from the cache
        video = cached[(0, epoch)]["video"]
        assert video.any() and torch.equal(video, disk[(0, epoch)]["video"])
