"""The semi-supervised parts of SeFAR: pseudo-labels with Adaptive Regulation, tube mixing, EMA, warm-up.

Notation follows the paper (see DESIGN.md):

* the teacher predicts each unlabeled clip U times with its head's dropout active; ``p̄`` is the mean softmax,
  the pseudo-label is ``argmax p̄``, ``μ* = p̄[target]`` and ``σ*`` the (unbiased) standard deviation of the
  target class's probability over the U passes;
* ``τ1 = 2·sigmoid(e^μ* − e)``, ``τ2 = 2·(sigmoid(1 / (β σ* + ε)) − 0.5)``, ``η = τ1·τ2 ∈ (0, 1]``;
* ``L_un = mean(η · CE(student(strong), target))``;
* tube mixing replaces a set of patch positions, the same in every frame, of clip ``i`` by clip ``j``'s: a scattered
  random set of tokens (the reference's :func:`tube_token_mask`) or one box of patches (:func:`tube_box_mask`);
  ``λ`` is the fraction of clip ``i`` that is kept, target ``λ p̄_i + (1−λ) p̄_j`` and weight ``η' = λη_i + (1−λ)η_j``;
  the mix loss is the reference's :func:`mse_to_probs` (or :func:`soft_cross_entropy`);
* ``L = L_sup + ξ (γ1 L_un + γ2 L_mix)`` with ``ξ`` a sine-shaped warm-up after some supervised-only epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class PseudoLabels:
    """Teacher targets for a batch of B unlabeled clips."""

    probs: torch.Tensor  # (B, C) mean softmax over the passes, p̄
    target: torch.Tensor  # (B,) argmax of p̄
    confidence: torch.Tensor  # (B,) μ* = p̄[target]
    spread: torch.Tensor  # (B,) σ*: std of the target's probability over the passes (0 for one pass)
    weight: torch.Tensor  # (B,) η (Adaptive Regulation) or the 0/1 threshold mask


def adaptive_weight(mu: torch.Tensor, sigma: torch.Tensor, beta: float = 20.0, eps: float = 1e-9) -> torch.Tensor:
    """η = τ1·τ2 for confidence ``mu`` and spread ``sigma`` (both shaped (B,)); η ∈ (0, 1]."""
    tau1 = 2 * torch.sigmoid(torch.exp(mu) - math.e)
    tau2 = 2 * (torch.sigmoid(1.0 / (beta * sigma + eps)) - 0.5)
    return tau1 * tau2


def pseudo_labels(
    pass_logits: torch.Tensor,
    *,
    adaptive: bool = True,
    threshold: float | None = None,
    beta: float = 20.0,
    eps: float = 1e-9,
) -> PseudoLabels:
    """Targets from ``pass_logits`` shaped (U, B, C): U stochastic teacher passes.

    ``adaptive``: η from Adaptive Regulation (needs U >= 2). Otherwise the weight is the mask
    ``μ* >= threshold`` (FixMatch), or 1 everywhere when ``threshold`` is None.
    """
    probs = pass_logits.float().softmax(dim=-1)  # (U, B, C)
    mean = probs.mean(dim=0)  # (B, C)
    target = mean.argmax(dim=-1)  # (B,)
    mu = mean.gather(1, target[:, None]).squeeze(1)  # (B,)
    per_pass = probs.gather(2, target[None, :, None].expand(probs.shape[0], -1, 1)).squeeze(2)  # (U, B)
    sigma = per_pass.std(dim=0) if probs.shape[0] > 1 else torch.zeros_like(mu)
    if adaptive:
        if probs.shape[0] < 2:
            raise ValueError("Adaptive Regulation needs at least 2 teacher passes (ssl.passes >= 2)")
        weight = adaptive_weight(mu, sigma, beta, eps)
    elif threshold is not None:
        weight = (mu >= threshold).float()
    else:
        weight = torch.ones_like(mu)
    return PseudoLabels(mean, target, mu, sigma, weight)


@torch.no_grad()
def head_passes(model: nn.Module, head: nn.Module, features: torch.Tensor, passes: int) -> torch.Tensor:
    """``passes`` predictions ``(U, B, C)`` of ``model.forward_head`` on backbone features, with ``head``'s
    dropout active (its mode is restored afterwards)."""
    was_training = head.training
    head.train()
    try:
        return torch.stack([model.forward_head(features) for _ in range(passes)])  # (U, B, C)
    finally:
        head.train(was_training)


@torch.no_grad()
def teacher_passes(teacher: nn.Module, head: nn.Module, clips: torch.Tensor, passes: int) -> torch.Tensor:
    """Logits of ``passes`` stochastic teacher predictions, shaped (U, B, C).

    The backbone runs once in eval mode (no drop path); only ``head`` (the fusion head, whose dropout is the
    only randomness left) runs ``passes`` times in train mode. This equals ``passes`` full forward passes with
    the same dropout draws, at the cost of one. One pass is deterministic (head in eval mode).
    """
    was_training = teacher.training
    teacher.eval()
    try:
        features = teacher.forward_features(clips)
        if passes == 1:
            return teacher.forward_head(features)[None]  # (1, B, C)
        return head_passes(teacher, head, features, passes)
    finally:
        teacher.train(was_training)


@torch.no_grad()
def teacher_passes_full(teacher: nn.Module, head: nn.Module, clips: torch.Tensor, passes: int) -> torch.Tensor:
    """The reference's way: ``passes`` whole forward passes. Same result as :func:`teacher_passes`, U× slower;
    kept for the equivalence test and the benchmark."""
    was_training = teacher.training
    teacher.eval()
    head.train(passes > 1)
    try:
        return torch.stack([teacher(clips) for _ in range(passes)])  # (U, B, C)
    finally:
        teacher.train(was_training)


def tube_box_mask(
    grid_h: int, grid_w: int, lam: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, float]:
    """One box of patch positions covering about ``1 - lam`` of a ``grid_h × grid_w`` grid (CutMix's box, on
    patches).

    Returns the mask ``(grid_h, grid_w)`` bool (True: take the partner's patch) and the kept fraction λ realised.
    """
    cut = math.sqrt(max(0.0, 1.0 - lam))
    bh, bw = round(grid_h * cut), round(grid_w * cut)
    top = int(torch.randint(0, grid_h - bh + 1, (1,), generator=generator))
    left = int(torch.randint(0, grid_w - bw + 1, (1,), generator=generator))
    mask = torch.zeros(grid_h, grid_w, dtype=torch.bool)
    mask[top : top + bh, left : left + bw] = True
    return mask, 1.0 - (bh * bw) / (grid_h * grid_w)


def tube_token_mask(
    grid_h: int, grid_w: int, lam: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, float]:
    """A scattered random set of ``round((1 - lam) · N)`` of the N patch positions (the reference's tube mask).

    Returns the mask ``(grid_h, grid_w)`` bool (True: take the partner's patch) and the kept fraction λ realised.
    """
    n = grid_h * grid_w
    replaced = min(n, max(0, round((1.0 - lam) * n)))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:replaced]] = True
    return mask.view(grid_h, grid_w), 1.0 - replaced / n


def tube_mix_tokens(clips: torch.Tensor, partner: torch.Tensor, mask: torch.Tensor, patch: int) -> torch.Tensor:
    """Replace the patches where ``mask (gh, gw)`` is True, in every frame of ``clips (B, C, K, H, W)``, by
    ``clips[partner]``'s. For a patchify stem this equals mixing the patch tokens."""
    pixels = mask.repeat_interleave(patch, 0).repeat_interleave(patch, 1).to(clips.device)  # (H, W)
    return torch.where(pixels, clips[partner], clips)  # (B, C, K, H, W)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy (B,) against a soft target (B, C)."""
    return -(target * logits.float().log_softmax(dim=-1)).sum(dim=-1)


def mse_to_probs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The reference's mix loss: per-sample mean over classes of ``(logits − target)²`` (B,), target (B, C)
    being probabilities. Much weaker than the soft cross-entropy: its gradient per logit is at most ~2/C."""
    return (logits.float() - target).pow(2).mean(dim=-1)


def warmup_factor(
    epoch: float, supervised_epochs: float, ramp_epochs: float | None, total_epochs: float | None = None
) -> float:
    """ξ: 0 during the supervised-only epochs, then ``sin(π/2 · t)`` over ``ramp_epochs``, then 1.

    ``ramp_epochs=None`` ramps over all remaining epochs, ``total_epochs − supervised_epochs`` (the reference's).
    """
    if epoch < supervised_epochs:
        return 0.0
    if ramp_epochs is None:
        if total_epochs is None:
            raise ValueError("ramp_epochs=None needs total_epochs")
        ramp_epochs = total_epochs - supervised_epochs
    if ramp_epochs <= 0:
        return 1.0
    t = min(1.0, (epoch - supervised_epochs) / ramp_epochs)
    return math.sin(0.5 * math.pi * t)


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """EMA decay for the update after ``step`` optimizer steps (0-based).

    Without warm-up it is ``decay``. With warm-up it is ``min(decay, (1 + step) / (10 + step))`` (0.1 at the first
    update, 0.9 after 80, 0.99 after 890 steps): early on the teacher follows the student closely instead of
    keeping most of its random initialisation, which matters for runs of a few hundred steps.
    """
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


def _equal_pairs(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[bool]:
    """Which ``(a, b)`` pairs hold equal values (same shape), with one device-to-host transfer for all of them."""
    flags = [a.shape == b.shape for a, b in pairs]
    same = [i for i, ok in enumerate(flags) if ok]
    if same:
        equal = torch.stack([torch.eq(pairs[i][0], pairs[i][1]).all().to(pairs[0][0].device) for i in same]).tolist()
        for i, value in zip(same, equal, strict=True):
            flags[i] = value
    return flags


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher ← decay·teacher + (1 − decay)·student for parameters; buffers are copied.

    A frozen student parameter (no gradient) that the teacher already equals, and a buffer that it already equals,
    are left untouched: the update would not change them, and writing them in place would tell every cache built on
    them (the frozen stem's folded copy) that they changed. The comparison costs one device-to-host transfer per
    call, not one per tensor.
    """
    params = list(zip(teacher.parameters(), student.parameters(), strict=True))
    buffers = list(zip(teacher.buffers(), student.buffers(), strict=True))
    frozen = [(tp, sp) for tp, sp in params if not sp.requires_grad]
    equal = _equal_pairs(frozen + buffers)
    kept = {id(tp) for (tp, _), same in zip(frozen, equal) if same}
    moving = [(tp, sp.detach()) for tp, sp in params if id(tp) not in kept]
    if moving:
        torch._foreach_lerp_([tp for tp, _ in moving], [sp for _, sp in moving], 1.0 - decay)
    for (tb, sb), same in zip(buffers, equal[len(frozen):], strict=True):
        if not same:
            tb.copy_(sb)
