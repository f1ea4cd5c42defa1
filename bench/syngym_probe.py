"""Which encoder can learn SynGym on a CPU? The real TimeSformer variants against the early-fusion CNN, supervised.

    sefar data synth --out outputs/syngym
    python -m bench.syngym_probe --data outputs/syngym                     # every variant, about 15 min on 2 cores
    python -m bench.syngym_probe --data outputs/syngym --variants conv32   # one of them
    python -m bench.syngym_probe --data outputs/syngym --label-ratio 0.1 --variants cnn embedded  # 10% of the labels
    python -m bench.syngym_probe --data outputs/syngym --labeled RUN/split/labeled.txt  # an encoder run's labeled clips

A probe for choosing the embedded encoder, not a training recipe: every clip is read once (the 8 segment-centre
frames that SeFAR samples at evaluation, at ``--size`` px, kept in memory), and each variant trains from scratch
with all labels (or a class-stratified ``--label-ratio`` of them, drawn with ``--seed``, or the clips of a
``--labeled`` list such as an encoder run's labeled split), supervised only, on the same batches: AdamW with a
one-cycle schedule, gradient clipping at 1, label smoothing 0.1, a random left-right flip (SynGym classes are
flip-invariant). No frame jitter, no scale jitter, no decoding per step: a variant that cannot learn here will not
learn in ``sefar encoder train`` either, at five to ten times the cost per step.

The TimeSformer variants are :func:`encoder.timesformer.create_model` exactly as the encoder trains it (dual-level
elements ``{2-2-4}``, fusion head), changed only where the variant says (stem, patch size, depth, combo). The
CNN row is :class:`bench.syngym_difficulty.FrameCNN` on the 8 frames stacked along channels (early fusion); the
``conv16_stem_linear`` row is the TimeSformer's own conv stem with a linear readout of every frame's tokens in
time order (:class:`StemReadout`), which separates the stem from the attention blocks.
Reported on the val split: top-1 and direction-pair accuracy (the true class scored above its time-reversed
sibling; chance 50%), at every ``--eval-every`` steps too, so a reader sees whether a variant is still climbing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.syngym_difficulty import NUM_FRAMES, FrameCNN, load_split, model_input, scores, stratified
from common.errors import DataError
from common.finegym import read_categories, read_element_list
from common.results import Table, provenance, write_result
from encoder.data.syngym import dataset_identity, direction_pairs
from encoder.timesformer import PatchEmbed, create_model

class StemReadout(torch.nn.Module):
    """The TimeSformer's conv stem on each frame, then one linear map of all tokens of all frames, in order."""

    def __init__(self, size: int, num_classes: int, patch: int = 16, dim: int = 96) -> None:
        super().__init__()
        self.stem = PatchEmbed(patch, 3, dim, "conv")
        self.fc = torch.nn.Linear(NUM_FRAMES * (size // patch) ** 2 * dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, K, S, S)
        tokens = self.stem(x.transpose(1, 2).flatten(0, 1))  # (B*K, N, D)
        return self.fc(F.relu(tokens).reshape(x.shape[0], -1))


def _cnn(size: int, num_classes: int) -> torch.nn.Module:
    return FrameCNN(size, num_classes, frames=NUM_FRAMES)


def _timesformer(combo: str = "2-2-4", **overrides) -> Callable[[int, int], torch.nn.Module]:
    """A factory of the encoder's ``tiny`` TimeSformer with ``overrides``, as the probe trains it."""
    return lambda size, num_classes: create_model("tiny", num_classes, combo=combo, img_size=size,
                                                  drop_path_rate=0.0, head_dropout=0.2, **overrides)


#: name -> (what it is, model factory ``(size, num_classes) -> module``)
VARIANTS: dict[str, tuple[str, Callable[[int, int], torch.nn.Module]]] = {
    "cnn": ("early-fusion CNN (8 frames on channels), the pixel reference", _cnn),
    "embedded": ("today's embedded default: frozen ImageNet EfficientNet-Lite0 stem, stride 16, 2 blocks",
                 _timesformer(stem="effnet_lite0", patch_size=16, depth=2, stem_weights="package", freeze_stem=True)),
    "conv16": ("conv stem from scratch, patch 16 (4x4 tokens), 2 blocks", _timesformer(stem="conv", patch_size=16,
                                                                                       depth=2)),
    "conv16_d4": ("conv stem, patch 16, 4 blocks", _timesformer(stem="conv", patch_size=16, depth=4)),
    "conv16_one_element": ("conv stem, patch 16, 2 blocks, one 8-frame element (combo 8: frames in order)",
                           _timesformer(combo="8", stem="conv", patch_size=16, depth=2)),
    "conv32": ("conv stem, patch 32 (2x2 tokens), 2 blocks", _timesformer(stem="conv", patch_size=32, depth=2)),
    "conv16_stem_linear": ("the conv16 stem alone: its tokens of the 8 frames concatenated in time order, one "
                           "linear classifier (no attention)", StemReadout),
}


def labeled_indices(listed: Path, train_list: Path) -> torch.Tensor:
    """Indices into ``train_list``'s clips of the clips in ``listed`` (a ``path label`` list, e.g. an encoder run's
    ``split/labeled.txt``), matched by file name; a clip that the train list lacks, or labels otherwise, is refused
    with its line."""
    from encoder.data.splits import read_numbered_samples

    if not listed.is_file():
        raise DataError(listed, "missing: a `path label` list of labeled clips")
    where = {clip_id: (i, label) for i, (clip_id, label) in enumerate(read_element_list(train_list))}
    keep = []
    for line, sample in read_numbered_samples(listed):
        clip_id = Path(sample.path).stem
        if clip_id not in where:
            raise DataError(listed, f"clip {clip_id} is not in {train_list}", line)
        index, label = where[clip_id]
        if label != sample.label:
            raise DataError(listed, f"clip {clip_id} has label {sample.label} here but {label} in {train_list}", line)
        keep.append(index)
    return torch.tensor(sorted(keep))


def inputs(model: torch.nn.Module, clips: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The model's float input for clips ``idx`` of the ``(N, 9, 3, S, S)`` uint8 store."""
    if isinstance(model, FrameCNN):
        return model_input(clips, idx, NUM_FRAMES)  # (B, 24, S, S)
    return (clips[idx, :NUM_FRAMES].float() / 127.5 - 1.0).transpose(1, 2)  # (B, C, K, S, S), the encoder's [-1, 1]


@torch.no_grad()
def evaluate(model, x, y) -> dict:
    model.eval()
    logits = torch.cat([model(inputs(model, x, idx)) for idx in torch.arange(len(x)).split(128)])
    model.train()
    return scores(logits, y, direction_pairs())


def train(model, data, args) -> dict:
    x, y, xv, yv = data
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    curve, seconds = [], 0.0
    model.train()
    for step in range(1, args.steps + 1):
        began = time.perf_counter()
        idx = torch.randint(0, len(x), (args.batch,), generator=gen)
        batch = inputs(model, x, idx)
        flip = torch.rand(args.batch, generator=gen) < 0.5
        batch[flip] = batch[flip].flip(-1)
        loss = F.cross_entropy(model(batch), y[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        seconds += time.perf_counter() - began
        if step % args.eval_every == 0 or step == args.steps:
            curve.append({"step": step, "train_s": round(seconds, 1), **evaluate(model, xv, yv)})
            print(f"  step {step}: {curve[-1]}", flush=True)
    return {"params": sum(p.numel() for p in params), **curve[-1], "curve": curve}  # train_s: at the last step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="a SynGym folder (sefar data synth --out DIR)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--size", type=int, default=64, help="frame size (px; the embedded config's 64)")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps per variant")
    p.add_argument("--batch", type=int, default=16)
    share = p.add_mutually_exclusive_group()
    share.add_argument("--label-ratio", type=float, default=1.0,
                       help="train on this class-stratified share of the train clips (drawn with --seed); 1 = all")
    share.add_argument("--labeled", type=Path, metavar="LIST",
                       help="train on exactly these clips of the train list instead: a `path label` list such as an "
                            "encoder run's split/labeled.txt (clips matched by file name)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench/results/syngym_probe.json"))
    args = p.parse_args(argv)
    if not 0.0 < args.label_ratio <= 1.0:
        p.error(f"--label-ratio {args.label_ratio}: use a share in (0, 1]")
    try:  # before any clip is read
        identity = dataset_identity(args.data)
        chosen = None if args.labeled is None else labeled_indices(args.labeled, args.data / "train_element.txt")
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = provenance()
    torch.set_num_threads(args.threads)
    num_classes = len(read_categories(args.data / "categories.txt"))
    began = time.perf_counter()
    data = (*load_split(args.data, "train_element.txt", args.size),
            *load_split(args.data, "val_element.txt", args.size))
    print(f"loaded {len(data[0])} train + {len(data[2])} val clips in {time.perf_counter() - began:.0f} s")
    share = None  # which labeled clips, when not all of them
    if chosen is not None:
        data = (data[0][chosen], data[1][chosen], *data[2:])
        share = f"the labeled clips of {args.labeled}"
        print(f"training on the {len(chosen)} labeled clips of {args.labeled}")
    elif args.label_ratio < 1.0:
        keep = stratified(data[1], args.label_ratio, args.seed)
        data = (data[0][keep], data[1][keep], *data[2:])
        share = f"{args.label_ratio:.0%} of the labels"
        print(f"training on {len(keep)} labeled clips ({args.label_ratio:.0%} of each class)")
    labels = "All labels" if share is None else share[0].upper() + share[1:]

    results = {}
    for name in args.variants:
        print(f"{name}: {VARIANTS[name][0]}", flush=True)
        torch.manual_seed(args.seed)
        results[name] = train(VARIANTS[name][1](args.size, num_classes), data, args)

    table = Table("", ["variant", "what", "trained params", "val top-1 (%)", "direction pairs (%)", "train s",
                       f"top-1 at steps {', '.join(str(c['step']) for c in next(iter(results.values()))['curve'])}"])
    for name, r in results.items():
        table.add(name, VARIANTS[name][0], f"{r['params']:,}", r["top1"], r["direction_pairs"], r["train_s"],
                  " / ".join(str(c["top1"]) for c in r["curve"]))
    table.notes = (f"{labels} ({len(data[0])} train clips), {args.steps} steps of {args.batch} clips, lr {args.lr}, "
                   f"{args.size} px, {args.threads} threads, seed {args.seed}; {len(data[2])} val clips, {num_classes} "
                   "classes (chance 3.0%). Frames held in memory (segment centres), flips only: see the module notes.")
    title = "Which encoder learns SynGym on a CPU: TimeSformer variants vs the early-fusion CNN"
    write_result(args.out, title if share is None else f"{title}, {share}",
                 [table], {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                           "results": results, **identity}, started=started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
