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

Two more rows come from the render parameters (the folder's ``manifest.json`` gives seed and size, and every clip
is a pure function of them), no pixels needed:

* ``pose_oracle``: what is learnable in principle. A linear softmax classifier (numpy) on the figure's true 2-D
  joints at the same 8 frames, mirrored to face right (facing-normalised): joints relative to the pelvis, the
  pelvis path, and the sine and cosine of the torso's and head's rotation between consecutive frames;
* per class (a second table): how often a rotation (salto, twist or turn) changes by 180 degrees or more between
  two sampled frames, where its sense reads the other way: consecutive frames at the evaluation sampling
  (segment centres) and at the training sampling (a random frame per segment, 10 draws per clip), and frames
  adjacent inside the fine elements (f1-f5, f3-f7) and the context element (f0-f2-f4-f6) of ``{2-2-4}``.

Prints the tables and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import DataError
from common.finegym import read_categories, read_element_list
from common.results import Table, provenance, write_result
from encoder.data import syngym
from encoder.data.sampling import segment_frame_indices
from encoder.data.syngym import direction_pairs
from encoder.data.syngym_motion import figure_motion
from encoder.data.syngym_render import J
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
    return scores(logits, y, pairs)


def scores(logits: torch.Tensor, y: torch.Tensor, pairs: list[tuple[int, int]]) -> dict:
    """Top-1 and direction-pair accuracy of ``logits`` ``(N, C)`` for labels ``y`` ``(N,)``, in percent."""
    from encoder.evaluate import direction_pair_accuracy, direction_partners

    pair_accuracy, clips = direction_pair_accuracy(logits, y, direction_partners(y.tolist(), pairs))
    return {
        "top1": round(100.0 * (logits.argmax(1) == y).float().mean().item(), 1),
        "direction_pairs": None if pair_accuracy is None else round(100.0 * pair_accuracy, 1),
        "direction_clips": clips,
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


# ----------------------------------------------------------------------------- from the render parameters

def clip_performances(data: Path) -> dict[str, tuple[syngym.ElementClass, syngym.Performance]] | None:
    """``{clip id: (class, performance)}`` of a SynGym folder, recomputed from its manifest's seed and size;
    None when the folder was made by another SynGym version (its clips would not match this code)."""
    manifest = json.loads((data / "manifest.json").read_text())
    if manifest.get("version") != syngym.VERSION or manifest.get("size") not in syngym.SIZES:
        return None
    preset = syngym.SIZES[manifest["size"]]
    jobs, _ = syngym.build_plan(manifest["seed"], preset)
    out = {}
    for job in jobs:
        element = syngym.CLASSES[job.label]
        out[job.clip_id] = (element, syngym.clip_params(manifest["seed"], job.index, element, preset)[1])
    return out


def _rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sine and cosine of the angle from 2-D vectors ``a`` to ``b`` (``(..., 2)``), ``(..., 2)``."""
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-9)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-9)
    return np.stack([a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0], (a * b).sum(-1)], axis=-1)


def pose_features(element: syngym.ElementClass, perf: syngym.Performance) -> np.ndarray:
    """Facing-normalised 2-D joint trajectory features of a clip at its 8 segment-centre frames, ``(F,)``."""
    placed = figure_motion(element.motion, element.shape, element.direction, element.rotations, element.turns, perf)
    frames = placed[segment_frame_indices(perf.num_frames, NUM_FRAMES, train=False), :, :2].copy()  # (8, J, 2)
    frames[..., 0] *= perf.facing  # mirror every clip to face right
    pelvis = frames[:, J["pelvis"]]
    relative = frames - pelvis[:, None]
    torso = frames[:, J["neck"]] - pelvis
    face = frames[:, J["nose"]] - frames[:, J["head"]]
    turns = np.concatenate([_rotation(v[:-1], v[1:]) for v in (torso, face)], axis=-1)  # (7, 4)
    return np.concatenate([relative.ravel(), (pelvis - pelvis.mean(0)).ravel(), turns.ravel()])


def linear_classifier(x: np.ndarray, y: np.ndarray, num_classes: int, steps: int = 600, lr: float = 0.5,
                      l2: float = 1e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Softmax regression by full-batch gradient descent with momentum on standardised features.

    Returns ``(mean, std, weights)``; logits of ``x'`` are ``[(x' - mean) / std, 1] @ weights``.
    """
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
    target = np.eye(num_classes)[y]
    w = np.zeros((z.shape[1], num_classes))
    velocity = np.zeros_like(w)
    for _ in range(steps):
        logits = z @ w
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = z.T @ (p - target) / len(z) + l2 * w
        velocity = 0.9 * velocity - lr * grad
        w += velocity
    return mean, std, w


def pose_oracle(params: dict, train: list, val: list, num_classes: int) -> tuple[dict, np.ndarray]:
    """Train the linear pose classifier on ``train`` (``[(clip id, label)]``), score ``val``.

    Returns the metrics and the per-class val recall (percent, ``(C,)``).
    """
    began = time.perf_counter()
    def features(items):
        return np.stack([pose_features(*params[clip_id]) for clip_id, _ in items]), np.array([l for _, l in items])

    x_train, y_train = features(train)
    x_val, y_val = features(val)
    mean, std, w = linear_classifier(x_train, y_train, num_classes)
    logits = np.hstack([(x_val - mean) / std, np.ones((len(x_val), 1))]) @ w
    metrics = scores(torch.from_numpy(logits), torch.from_numpy(y_val), direction_pairs())
    correct = logits.argmax(1) == y_val
    recall = np.array([100.0 * correct[y_val == c].mean() if (y_val == c).any() else np.nan
                       for c in range(num_classes)])
    return {"frames": NUM_FRAMES, "train_clips": len(train), **metrics,
            "train_s": round(time.perf_counter() - began)}, recall


def aliasing_table(params: dict, items: list, recall: np.ndarray) -> tuple[Table, list[dict]]:
    """Per class: the aliasing fractions (percent of clips) over ``items`` and the pose oracle's val recall."""
    by_class: dict[int, list] = {}
    for clip_id, label in items:
        by_class.setdefault(label, []).append(params[clip_id][1])
    table = Table("Per class: rotation steps of 180 degrees or more between sampled frames (% of clips)",
                  ["label", "class", "eval", "train", "fine {2-2-4}", "context {2-2-4}", "median max step (deg)",
                   "pose oracle val top-1 (%)"])
    rows = []
    for label in sorted(by_class):
        element = syngym.CLASSES[label]
        a = syngym.aliasing(element, by_class[label])
        row = {"label": label, "class": f"({element.event}) {element.name}", "clips": len(by_class[label]),
               **{k: round(100 * a[k], 1) for k in ("eval", "train", "fine", "context")},
               "median_max_step": round(a["eval_median_max"]), "oracle_recall": round(float(recall[label]), 1)}
        rows.append(row)
        table.add(label, row["class"], row["eval"], row["train"], row["fine"], row["context"],
                  row["median_max_step"], row["oracle_recall"])
    table.notes = (f"{len(items)} clips (train + val), from the render parameters. eval: some pair of consecutive "
                   "segment-centre frames (8 per clip) differs by >= 180 degrees in the salto, twist or turn angle; "
                   "train: the same with one random frame per segment (10 draws per clip, % of draws); fine / "
                   "context: frames adjacent inside the fine elements (f1-f5, f3-f7) / the context element "
                   "(f0-f2-f4-f6) of {2-2-4}, segment centres. median max step: over clips, the median of the "
                   "largest consecutive step at the evaluation sampling. Pose oracle: per-class val top-1 of the "
                   "linear classifier on facing-normalised 2-D joints.")
    return table, rows


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
    try:
        identity = syngym.dataset_identity(args.data)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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

    params = clip_performances(args.data)
    tables = []
    if params is None:
        print(f"{args.data}: size preset not known to this code; no pose oracle or aliasing table")
    else:
        train_items = read_element_list(args.data / "train_element.txt")
        val_items = read_element_list(args.data / "val_element.txt")
        results["pose_oracle"], recall = pose_oracle(params, train_items, val_items, num_classes)
        print(f"{'pose_oracle':>16}: {results['pose_oracle']}", flush=True)
        alias, per_class = aliasing_table(params, train_items + val_items, recall)
        tables.append(alias)

    table = Table("", ["model", "frames", "train clips", "val top-1 (%)", "direction pairs (%)", "train s"])
    for name, r in results.items():
        table.add(name, r["frames"], r["train_clips"], r["top1"], r["direction_pairs"], r["train_s"])
    table.notes = (f"The same small CNN ({args.steps} steps of {args.batch} clips, {args.size} px, "
                   f"{args.threads} thread) on the middle frame, on 8 ordered frames (early fusion), and on 8 frames "
                   f"with {round(100 * args.ratio)}% of the labels; {len(x_val)} val clips, {num_classes} classes. "
                   "Direction pairs: how often the true class scores above its time-reversed sibling (chance 50%)."
                   + ("" if params is None else " pose_oracle: a linear classifier on the true 2-D joints at the 8 "
                      "frames, mirrored to face right (no pixels): what is learnable in principle."))
    report = {"data": args.data.name, "classes": num_classes, "val_clips": len(x_val), "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "results": results,
        "wall_s": round(time.perf_counter() - began), **identity}
    if params is not None:
        report["per_class"] = per_class
    write_result(args.out, "SynGym is a fine-grained problem: frame-wise vs temporal pixel models", [table, *tables],
                 report, started=started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
