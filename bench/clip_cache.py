"""Reading SeFAR's unlabeled clips in training: the sampled frames cached against whole clips cached.

    python -m bench.clip_cache                          # SynGym in outputs/syngym, the embedded config
    python -m bench.clip_cache --data DIR --epochs 3

The unlabeled stream of a SeFAR run is read the way training reads it: a :class:`~encoder.data.dataset.ClipDataset`
of the run's unlabeled clips with the weak + strong :class:`~encoder.train.UnlabeledTransform`, batches of the
micro-batch times ``ssl.unlabeled_ratio``, in the training process (``data.num_workers: 0``), under the config's
``data.cache_mb``. It is read for ``--epochs`` passes over the clips with each of the two caches, in alternating
order (``--rounds``), so that a machine whose speed drifts affects both alike:

- **sampled frames** (what the dataset does where sampling is fixed, as with the embedded config's centre frames):
  each clip's K frames are read once and kept;
- **whole clips** (the earlier reader, still what random frame sampling uses): the whole decoded clip is kept and
  indexed; clips that no longer fit the limit are decoded from disk at every read.

Both give the same items (checked on a batch of each epoch). The table gives the seconds per batch of the first
epoch (every clip read from disk) and of the later ones, the reads from disk, and the bytes held. Prints a table and
writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch

from common.errors import ConfigError, DataError
from common.results import Table, provenance, write_result

CACHES = ("sampled frames", "whole clips")


@contextlib.contextmanager
def _counting_reads(counter: list[int]):
    """Count the clip reads from disk of :mod:`encoder.data.dataset` while inside."""
    import encoder.data.dataset as dataset

    real = dataset.read_frames

    def counted(*args, **kw):
        counter[0] += 1
        return real(*args, **kw)

    dataset.read_frames = counted
    try:
        yield
    finally:
        dataset.read_frames = real


def read_epochs(cfg, items, layout, cache: str, epochs: int) -> dict:
    """Read ``epochs`` passes of ``items`` as SeFAR's unlabeled stream with ``cache``; seconds per batch of each
    epoch, reads from disk, bytes held, and one batch of each epoch (to compare the two caches)."""
    from encoder.data.dataset import ClipDataset, EpochBatchSampler
    from encoder.train import UnlabeledTransform, _loader

    ds = ClipDataset(items, layout.num_frames, UnlabeledTransform(cfg, layout), train=True, seed=cfg.seed + 1,
                     short_side=cfg.data.short_side, jitter=cfg.data.frame_jitter, cache_mb=cfg.data.cache_mb)
    if cache == "whole clips":
        ds._fixed = False  # the earlier reader: whole clips kept and indexed
    sampler = EpochBatchSampler(len(ds), cfg.optim.micro_batch_size * cfg.ssl.unlabeled_ratio, seed=cfg.seed + 1)
    batches = iter(_loader(ds, sampler, 0))
    per_epoch, reads, seconds, firsts = sampler.batches_per_epoch, [0], [], []
    with _counting_reads(reads):
        for _ in range(epochs):
            began = time.perf_counter()
            firsts.append(next(batches))
            for _ in range(per_epoch - 1):
                next(batches)
            seconds.append((time.perf_counter() - began) / per_epoch)
    return {"batch_s": seconds, "disk_reads": reads[0], "cache_bytes": ds._cache_bytes,
            "batches_per_epoch": per_epoch, "firsts": firsts}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/encoder/syngym_tiny.yaml"))
    parser.add_argument("--data", type=Path, default=Path("outputs/syngym"), help="SynGym (or FineGym-format) root")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the unlabeled clips (the first decodes all)")
    parser.add_argument("--rounds", type=int, default=2, help="each cache this many times, alternating")
    parser.add_argument("--out", type=Path, default=Path("bench/results/clip_cache.json"))
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.rounds < 1:
        raise SystemExit("error: --epochs must be >= 2 (the first one decodes every clip) and --rounds >= 1")

    from encoder.config import load_config
    from encoder.data.sampling import ElementLayout
    from encoder.run import build_train_items

    started = provenance()
    try:
        cfg = load_config(args.config, [f"data.root={args.data}", *args.overrides])
        _, items = build_train_items(cfg)
    except (ConfigError, DataError) as err:
        raise SystemExit(f"error: {err}") from None
    except OSError as err:  # a list file that is not there
        raise SystemExit(f"error: {err.filename}: {err.strerror}") from None
    if cfg.data.frame_jitter != 0.0:
        raise SystemExit(f"error: {args.config}: data.frame_jitter={cfg.data.frame_jitter}: the sampled frames are "
                         "cached only where sampling is fixed (frame_jitter=0)")
    layout = ElementLayout.from_combo(cfg.model.combo)
    runs: dict[str, list[dict]] = {name: [] for name in CACHES}
    for r in range(args.rounds):
        for name in CACHES if r % 2 == 0 else CACHES[::-1]:
            runs[name].append(read_epochs(cfg, items, layout, name, args.epochs))
    for a, b in zip(runs[CACHES[0]][0]["firsts"], runs[CACHES[1]][0]["firsts"]):
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            raise SystemExit("error: the two caches gave different batches")

    rows = []
    for name, done in runs.items():
        first = statistics.median(d["batch_s"][0] for d in done)
        later = statistics.median(s for d in done for s in d["batch_s"][1:])
        rows.append({"cache": name, "first_epoch_batch_s": round(first, 4), "later_epochs_batch_s": round(later, 4),
                     "later_rounds_batch_s": [round(statistics.mean(d["batch_s"][1:]), 4) for d in done],
                     "disk_reads": done[0]["disk_reads"], "cache_mib": round(done[0]["cache_bytes"] / 2**20, 1)})
    batch = cfg.optim.micro_batch_size * cfg.ssl.unlabeled_ratio
    result = {"clips": len(items), "batch": batch, "epochs": args.epochs, "rounds": args.rounds,
              "batches_per_epoch": runs[CACHES[0]][0]["batches_per_epoch"], "cache_mb": cfg.data.cache_mb,
              "threads": torch.get_num_threads(), "rows": rows}
    table = Table("", ["cache", "s per batch, epoch 1", "s per batch, later epochs", "later epochs per round",
                       "reads from disk", "MiB held"])
    for r in rows:
        table.add(r["cache"], f"{r['first_epoch_batch_s']:.3f}", f"{r['later_epochs_batch_s']:.3f}",
                  " / ".join(f"{s:.3f}" for s in r["later_rounds_batch_s"]), r["disk_reads"], f"{r['cache_mib']:.1f}")
    notes = [f"{len(items)} unlabeled clips of {args.data} ({args.config.name}), batches of {batch} (weak + strong "
             f"views), {args.epochs} epochs of {result['batches_per_epoch']} batches, read in the training process "
             f"on {result['threads']} threads, data.cache_mb={cfg.data.cache_mb:g}; each cache {args.rounds}x in "
             "alternating order, medians. The same batches from both (checked)."]
    if args.overrides:
        notes.append("Overrides: " + " ".join(args.overrides) + ".")
    table.notes = " ".join(notes)
    write_result(args.out, "Reading SeFAR's unlabeled clips: the sampled frames cached vs whole clips cached", [table],
                 result, started=started)
    return result


if __name__ == "__main__":
    main()
