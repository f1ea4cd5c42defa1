"""Throughput of one SeFAR training step: our structure against the reference's, in one run.

    python -m bench.train_step                                   # tiny config on CPU
    python -m bench.train_step --model vit_base --img-size 224 --batch 8 --bf16   # on a GPU

One step = B labeled + 3B unlabeled clips of K = 8 frames: teacher pseudo-labels with U = 10 stochastic passes,
student forward/backward on labeled + strong + tube-mixed clips, SGD step, EMA update.

* ours: the recipe's own ``encoder.train.compute_losses``: equal-length elements share one backbone forward; the
  teacher backbone runs once and only the head U times; the student sees the labeled clips in one forward and the
  strong and mixed clips in another;
* reference: one backbone forward per element, U whole teacher passes, one student forward per input group, with
  the same loss (η for L_un, η' for the mix, λ ~ Beta(α, α), γ1, γ2 and the mix loss of ``SSLConfig``).

Inputs are random tensors already on the device (data loading is timed by bench/decode.py). Prints a table and
writes JSON; on CUDA it also reports model FLOP utilisation (FLOPs counted with torch's FlopCounterMode).
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common.results import Table, provenance, write_result
from encoder.config import SSLConfig
from encoder.ssl import ema_update, mse_to_probs, pseudo_labels, soft_cross_entropy, tube_mix_tokens
from encoder.timesformer import TimeSformer, create_model
from encoder.train import compute_losses, mix_plan

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def reference_features(model: TimeSformer, x: torch.Tensor) -> torch.Tensor:
    """One backbone forward per element, as the reference does: (B, C, K, H, W) -> (B, E, D)."""
    b = x.shape[0]
    cls = []
    for i, positions in enumerate(model.layout.elements):
        frames = x[:, :, list(positions)].transpose(1, 2)  # (B, L, C, H, W)
        time_embed = model.time_embeds[i].expand(b, -1, -1)  # (B, L, D)
        cls.append(model._backbone(*model._embed(frames), time_embed)[:, 0])
    return torch.stack(cls, dim=1)  # (B, E, D)


def reference_forward(model: TimeSformer, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(reference_features(model, x))


@torch.no_grad()
def reference_teacher(teacher: TimeSformer, x: torch.Tensor, passes: int) -> torch.Tensor:
    teacher.eval()
    teacher.head.train()
    return torch.stack([reference_forward(teacher, x) for _ in range(passes)])  # (U, B, C)


def make_step(structure: str, student, teacher, opt, ssl: SSLConfig, autocast):
    """A closure running one full SSL step (ξ = 1); also returns a teacher-only closure."""
    patch = student.cfg.patch_size

    def teacher_side(u_weak):
        if structure == "ours":
            from encoder.ssl import teacher_passes

            return teacher_passes(teacher, teacher.head, u_weak, ssl.passes)
        return reference_teacher(teacher, u_weak, ssl.passes)

    def reference_loss(lab, y, u_weak, u_strong):
        pl = pseudo_labels(teacher_side(u_weak), beta=ssl.beta, eps=ssl.eps)
        plan = mix_plan(u_strong, ssl, patch)
        mixed = tube_mix_tokens(u_strong, plan.partner, plan.mask, patch)  # the reference mixes the frames
        l_lab, l_strong, l_mix = (reference_forward(student, v).float() for v in (lab, u_strong, mixed))
        target = plan.lam * pl.probs + (1 - plan.lam) * pl.probs[plan.partner]
        weight = plan.lam * pl.weight + (1 - plan.lam) * pl.weight[plan.partner]  # η'
        per_clip = mse_to_probs if ssl.mix_loss == "mse" else soft_cross_entropy
        return (
            F.cross_entropy(l_lab, y)
            + ssl.gamma1 * (pl.weight * F.cross_entropy(l_strong, pl.target, reduction="none")).mean()
            + ssl.gamma2 * (weight * per_clip(l_mix, target)).mean()
        )

    def step(lab, y, u_weak, u_strong):
        with autocast():
            if structure == "ours":
                unlabeled = {"weak": u_weak, "strong": u_strong, "label": torch.full_like(y, -1).repeat(3)}
                loss = compute_losses(student, teacher, {"video": lab, "label": y}, unlabeled, 1.0, ssl, patch).total
            else:
                loss = reference_loss(lab, y, u_weak, u_strong)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update(teacher, student, 0.999)

    return step, teacher_side


def timed(fn, args, iters: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def count_flops(fn, args) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return float(counter.get_total_flops())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4, help="labeled clips per step (unlabeled = 3x)")
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--classes", type=int, default=99)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--grad-ckpt", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_step.json"))
    args = parser.parse_args(argv)

    started = provenance()
    device = torch.device(args.device)
    torch.manual_seed(0)
    student = create_model(args.model, args.classes, img_size=args.img_size).to(device)
    student.set_grad_checkpointing(args.grad_ckpt)
    teacher = copy.deepcopy(student).requires_grad_(False)
    opt = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    k, s, b = student.layout.num_frames, args.img_size, args.batch
    lab = torch.randn(b, 3, k, s, s, device=device)
    y = torch.randint(0, args.classes, (b,), device=device)
    u_weak = torch.randn(3 * b, 3, k, s, s, device=device)
    u_strong = torch.randn(3 * b, 3, k, s, s, device=device)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    ssl = SSLConfig(passes=args.passes)
    rows = []
    for structure in ("reference", "ours"):
        step, teacher_side = make_step(structure, student, teacher, opt, ssl, autocast)
        def teacher_only(u, teacher_side=teacher_side):
            with autocast():
                return teacher_side(u)

        t_teacher = timed(teacher_only, (u_weak,), args.iters, args.warmup, device)
        t_step = timed(step, (lab, y, u_weak, u_strong), args.iters, args.warmup, device)
        row = {
            "structure": structure,
            "teacher_ms": round(1000 * t_teacher, 1),
            "step_ms": round(1000 * t_step, 1),
            "clips_per_s": round(4 * b / t_step, 2),
        }
        if device.type == "cuda":
            row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.reset_peak_memory_stats()
        rows.append(row)
    ref, ours = rows
    speedups = {
        "teacher_speedup": round(ref["teacher_ms"] / ours["teacher_ms"], 2),
        "step_speedup": round(ref["step_ms"] / ours["step_ms"], 2),
    }
    if device.type == "cuda":
        step, _ = make_step("ours", student, teacher, opt, ssl, autocast)
        flops = count_flops(step, (lab, y, u_weak, u_strong))
        name = torch.cuda.get_device_name(device)
        peak = next((v for key, v in PEAK_BF16_TFLOPS.items() if key in name), None)
        ours["tflops_per_step"] = round(flops / 1e12, 3)
        ours["achieved_tflops"] = round(flops / (ours["step_ms"] / 1000) / 1e12, 1)
        if peak and args.bf16:
            ours["mfu"] = round(ours["achieved_tflops"] / peak, 3)
    result = {
        "model": args.model, "img_size": args.img_size, "frames": k, "labeled_batch": b,
        "unlabeled_batch": 3 * b, "passes": args.passes, "bf16": args.bf16, "grad_ckpt": args.grad_ckpt,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.machine()}, "
        f"{torch.get_num_threads()} threads",
        "rows": rows, **speedups,
    }
    table = Table("", ["structure", "teacher ms", "step ms", "clips/s", "MFU"])
    for r in rows:
        table.add(r["structure"], f"{r['teacher_ms']:.1f}", f"{r['step_ms']:.1f}", f"{r['clips_per_s']:.2f}",
                  f"{r['mfu']:.1%}" if "mfu" in r else "-")
    table.notes = (f"{args.model} {args.img_size}px x {k} frames, {b} labeled + {3 * b} unlabeled clips, U = "
                   f"{args.passes} teacher passes{', bf16' if args.bf16 else ''}, on {result['device']}. Speed-up of "
                   f"ours: teacher side {speedups['teacher_speedup']}x, whole step {speedups['step_speedup']}x.")
    write_result(args.out, f"SSL training step: ours vs the reference's structure ({args.model}, {device.type})",
                 [table], result, started=started)
    return result


if __name__ == "__main__":
    main()
