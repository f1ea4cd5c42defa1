"""Where SeFAR mixes its tube, timed: on the stem's output tokens (``ssl.mix_space=tokens``) against the frames before
the stem (``pixels``), on the same model, inputs and process.

    python -m bench.mix_space                                     # the embedded config, 2 CPU cores
    python -m bench.mix_space --config configs/encoder/finegym_vit_b.yaml --batch 8   # a paper config, on a GPU

One step is :func:`encoder.train.compute_losses` with ξ = 1 (labeled, weak, strong and mixed clips: the teacher's U
passes and the student's two forwards), its backward and an optimizer step, on random clips of the config's size.
The two ways alternate in rounds (``--rounds``, each of ``--iters`` steps, the order flipped every round), so that a
machine whose speed drifts affects both alike; the table gives each way's median over the rounds. With a hybrid stem
(the embedded EfficientNet-Lite0) the token way saves the student's stem pass over the mixed clips; with a patchify
stem (the paper's ViTs) the two compute nearly the same.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from common.results import Table, provenance, write_result
from encoder.config import load_config
from encoder.run import build_model
from encoder.train import compute_losses

SPACES = ("tokens", "pixels")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/encoder/syngym_tiny.yaml"))
    parser.add_argument("--batch", type=int, default=None, help="labeled clips (default: the config's micro-batch)")
    parser.add_argument("--classes", type=int, default=33)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--iters", type=int, default=5, help="steps per round")
    parser.add_argument("--out", type=Path, default=Path("bench/results/mix_space.json"))
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)

    started = provenance()
    cfgs = {space: load_config(args.config, [*args.overrides, f"ssl.mix_space={space}"]) for space in SPACES}
    cfg = cfgs["tokens"]
    torch.manual_seed(0)
    student = build_model(cfg, args.classes)
    teacher = build_model(cfg, args.classes, pretrained=False).requires_grad_(False)
    teacher.load_state_dict(student.state_dict())
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)
    b, k, s = args.batch or cfg.optim.micro_batch_size, student.layout.num_frames, cfg.model.img_size
    u = b * cfg.ssl.unlabeled_ratio
    labeled = {"video": torch.randn(b, 3, k, s, s), "label": torch.randint(0, args.classes, (b,))}
    unlabeled = {"weak": torch.randn(u, 3, k, s, s), "strong": torch.randn(u, 3, k, s, s),
                 "label": torch.full((u,), -1)}
    patch = cfg.model.patch_size

    def step(space: str) -> None:
        student.train()
        losses = compute_losses(student, teacher, labeled, unlabeled, 1.0, cfgs[space].ssl, patch)
        losses.total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for space in SPACES:  # warm-up: first calls build kernels and the frozen stem's folded copy
        step(space)
        step(space)
    times: dict[str, list[float]] = {space: [] for space in SPACES}
    for r in range(args.rounds):
        for space in (SPACES if r % 2 == 0 else SPACES[::-1]):
            began = time.perf_counter()
            for _ in range(args.iters):
                step(space)
            times[space].append((time.perf_counter() - began) / args.iters)
    median = {space: statistics.median(v) for space, v in times.items()}
    rows = [{"mix_space": space, "step_s": round(median[space], 4), "rounds_s": [round(t, 4) for t in times[space]]}
            for space in SPACES]
    saving = 1 - median["tokens"] / median["pixels"]
    table = Table("", ["tube mixed", "s per step (median)", "per round"])
    for row in rows:
        table.add(row["mix_space"], f"{row['step_s']:.3f}", " / ".join(f"{t:.3f}" for t in row["rounds_s"]))
    table.notes = (f"{args.config.as_posix()}{' with ' + ' '.join(args.overrides) if args.overrides else ''}: "
                   f"{cfg.model.name}, stem {cfg.model.stem or 'default'}{' (frozen)' if cfg.model.freeze_stem else ''}, "
                   f"{s} px x {k} frames, {b} labeled + {u} unlabeled clips, U = {cfg.ssl.passes}; {args.rounds} "
                   f"alternating rounds of {args.iters} steps, {torch.get_num_threads()} threads. The token way takes "
                   f"{100 * saving:.0f}% less time per step.")
    summary = {"config": args.config.as_posix(), "overrides": args.overrides, "labeled_batch": b,
               "unlabeled_batch": u, "rows": rows, "saving": round(saving, 4)}
    write_result(args.out, "SeFAR step: the tube mixed on the stem's tokens vs in the frames", [table], summary,
                 started=started)
    return summary


if __name__ == "__main__":
    main()
