"""Is SynGym a fine-grained problem? A single-frame CNN against a temporal CNN, with all and with 10% labels.

    sefar data synth --out outputs/syngym                       # the default size
    python -m bench.syngym_difficulty --data outputs/syngym     # about 5 min on 2 CPU cores

Every clip is read once: 8 frames at the centres of 8 equal segments (as SeFAR samples at evaluation) plus
the middle frame, resized to ``--size`` px (48, the size of the tiny encoder config). Three models are trained
from scratch on CPU with the same small CNN (:class:`FrameCNN`: 4 stride-2 conv blocks, a 128-d projection and
a linear classifier), optimiser, batch size and step count:

* ``single_frame``: the CNN on the clip's middle frame;
* ``temporal``: the same CNN on the 8 frames stacked along channels (early fusion), so only its first layer
  differs; it can see in which order things happen, nothing else;
* ``temporal_10pct``: the temporal model trained on a class-stratified 10% of the train clips.

Training flips clips left-right at random (SynGym classes are flip-invariant by construction). Reported on the
val split: top-1 over all classes, and the *direction-pair* accuracy: over val clips of the forward/backward
pairs, how often the model scores the true class above its time-reversed sibling (chance: 50%).
Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.finegym import read_categories, read_element_list
from common.results import Table, provenance, write_result
from encoder.data.syngym import direction_pairs
from encoder.data.video import read_frames

NUM_FRAMES = 8


def clip_frames(path: Path, size: int) -> np.ndarray:
    """8 segment-centre frames and the middle frame of a clip, ``(9, 3, size, size)`` uint8 (middle last)."""
    frames = read_frames(path)  # (T, H, W, 3): SynGym clips are short, decoding all is the fastest
    count = len(frames)
    centres = ((np.arange(NUM_FRAMES) + 0.5) * count / NUM_FRAMES).astype(int)
    x = torch.from_numpy(frames[np.append(centres, count // 2)]).permute(0, 3, 1, 2).float()  # (9, 3, H, W)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


def load_split(data: Path, list_name: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All clips of a list: frames ``(N, 9, 3, size, size)`` uint8 and labels ``(N,)`` int64."""
    items = read_element_list(data / list_name)
    frames = np.stack([clip_frames(data / "videos" / f"{clip_id}.mp4", size) for clip_id, _ in items])
    return torch.from_numpy(frames), torch.tensor([label for _, label in items])


class FrameCNN(nn.Module):
    """Four stride-2 conv-BN-ReLU blocks, a linear map and a classifier: ``(B, 3 * frames, S, S)`` -> logits.

    ``frames`` RGB frames enter stacked along channels, so ``frames=1`` sees a single image and ``frames=8``
    is an *early-fusion* temporal model (Karpathy et al., CVPR 2014): the same network, whose first layer can
    compare the frames pixel by pixel.
    """

    def __init__(self, size: int, num_classes: int, frames: int = 1, width: int = 16, dim: int = 128):
        super().__init__()
        chans = [3 * frames, width, 2 * width, 4 * width, 4 * width]
        blocks: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            blocks += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        self.features = nn.Sequential(*blocks)
        self.proj = nn.Linear(chans[-1] * (size // 16) ** 2, dim)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.proj(self.features(x).flatten(1))))


def model_input(clips: torch.Tensor, idx: torch.Tensor, frames: int) -> torch.Tensor:
    """Clips ``idx`` of the uint8 ``(N, 9, 3, S, S)`` store as the float input of a model seeing ``frames``.

    1: the middle frame ``(B, 3, S, S)``; 8: the 8 segment frames in time order, ``(B, 24, S, S)``.
    Only those frames are gathered. Pixels are mapped to about ``[-2, 2]``.
    """
    x = clips[idx, NUM_FRAMES] if frames == 1 else clips[idx, :NUM_FRAMES].flatten(1, 2)
    return (x.float() / 255.0 - 0.5) / 0.25


def train(model: FrameCNN, x: torch.Tensor, y: torch.Tensor, frames: int, steps: int, batch: int, lr: float,
          seed: int) -> float:
    """AdamW, one-cycle schedule, ``steps`` random batches flipped left-right at random; returns seconds."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    began = time.perf_counter()
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        inputs = model_input(x, idx, frames)
        flip = torch.rand(batch, generator=gen) < 0.5
        inputs[flip] = inputs[flip].flip(-1)
        loss = F.cross_entropy(model(inputs), y[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return time.perf_counter() - began


@torch.no_grad()
def evaluate(model: FrameCNN, x: torch.Tensor, y: torch.Tensor, frames: int, pairs: list[tuple[int, int]]) -> dict:
    """Top-1 and direction-pair accuracy (true class scored above its reversed sibling) in percent."""
    model.eval()
    chunks = torch.arange(len(x)).split(256)
    logits = torch.cat([model(model_input(x, idx, frames)) for idx in chunks])
    sibling = {f: b for f, b in pairs} | {b: f for f, b in pairs}
    in_pair = torch.tensor([int(label) in sibling for label in y])
    other = torch.tensor([sibling.get(int(label), 0) for label in y])
    rows = torch.arange(len(y))
    wins = logits[rows, y] > logits[rows, other]
    return {
        "top1": round(100.0 * (logits.argmax(1) == y).float().mean().item(), 1),
        "direction_pairs": round(100.0 * wins[in_pair].float().mean().item(), 1),
        "direction_clips": int(in_pair.sum()),
    }


def stratified(y: torch.Tensor, ratio: float, seed: int) -> torch.Tensor:
    """Indices of ``ratio`` of each class (at least one), drawn with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for label in y.unique():
        members = (y == label).nonzero().flatten()
        take = max(1, round(ratio * len(members)))
        keep.append(members[torch.randperm(len(members), generator=gen)[:take]])
    return torch.cat(keep).sort().values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="a SynGym folder (sefar data synth --out DIR)")
    p.add_argument("--out", type=Path, default=Path("bench/results/syngym_difficulty.json"))
    p.add_argument("--size", type=int, default=48, help="frame size the models see (px, multiple of 16)")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps per model")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--ratio", type=float, default=0.1, help="labeled fraction of the low-label run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy machine)")
    args = p.parse_args(argv)
    started = provenance()
    torch.set_num_threads(args.threads)

    began = time.perf_counter()
    num_classes = len(read_categories(args.data / "categories.txt"))
    x_train, y_train = load_split(args.data, "train_element.txt", args.size)
    x_val, y_val = load_split(args.data, "val_element.txt", args.size)
    print(f"loaded {len(x_train)} train + {len(x_val)} val clips in {time.perf_counter() - began:.0f} s")
    few = stratified(y_train, args.ratio, args.seed)
    runs = {  # name: (frames seen, train clips, labels)
        "single_frame": (1, x_train, y_train),
        "temporal": (NUM_FRAMES, x_train, y_train),
        f"temporal_{round(100 * args.ratio)}pct": (NUM_FRAMES, x_train[few], y_train[few]),
    }
    results = {}
    for name, (frames, x, y) in runs.items():
        torch.manual_seed(args.seed)
        model = FrameCNN(args.size, num_classes, frames)
        seconds = train(model, x, y, frames, args.steps, args.batch, args.lr, args.seed)
        metrics = evaluate(model, x_val, y_val, frames, direction_pairs())
        results[name] = {"frames": frames, "train_clips": len(x), **metrics, "train_s": round(seconds)}
        print(f"{name:>16}: {results[name]}", flush=True)

    table = Table("", ["model", "frames", "train clips", "val top-1 (%)", "direction pairs (%)", "train s"])
    for name, r in results.items():
        table.add(name, r["frames"], r["train_clips"], r["top1"], r["direction_pairs"], r["train_s"])
    table.notes = (f"The same small CNN ({args.steps} steps of {args.batch} clips, {args.size} px, "
                   f"{args.threads} thread) on the middle frame, on 8 ordered frames (early fusion), and on 8 frames "
                   f"with {round(100 * args.ratio)}% of the labels; {len(x_val)} val clips, {num_classes} classes. "
                   "Direction pairs: how often the true class scores above its time-reversed sibling (chance 50%).")
    report = {"data": args.data.name, "classes": num_classes, "val_clips": len(x_val), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "results": results,
        "wall_s": round(time.perf_counter() - began)}
    write_result(args.out, "SynGym is a fine-grained problem: frame-wise vs temporal pixel models", [table], report,
                 started=started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
