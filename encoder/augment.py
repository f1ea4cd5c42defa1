"""Clip augmentations: weak/eval spatial transforms, strong RandAugment, temporal perturbations.

Spatial transforms take ONE clip laid out frames-first, ``(K, C, H, W)``, uint8 (0..255) or float (0..1), so that
``torchvision.transforms.v2`` treats K as a batch dimension and draws one set of parameters for the whole clip:
every frame gets the same crop, flip and RandAugment ops. :func:`normalize` then returns the model's layout
``(C, K, H, W)`` float.

Temporal perturbations (paper Tab. 4) are functions ``(layout, generator) -> idx: LongTensor (K,)``: output
frame ``k`` is input frame ``idx[k]``. Apply them as ``clip[idx]`` on ``(K, C, H, W)`` or ``clip[:, idx]`` on
``(C, K, H, W)``; only the time axis moves. SeFAR's strong view uses ``"mod-perturb"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from common.errors import ConfigError
from encoder.data.sampling import ElementLayout

__all__ = [
    "weak_transform",
    "eval_transform",
    "strong_spatial_transform",
    "resize_short_side",
    "spatial_crops",
    "normalize",
    "per_element_views",
    "channel_dropout",
    "TEMPORAL_PERTURBATIONS",
    "temporal_perturbation",
]

Transform = Callable[[Tensor], Tensor]

# ----------------------------------------------------------------------------------------------- spatial


def weak_transform(crop_size: int, short_side: tuple[int, int], flip: bool = True) -> Transform:
    """Scale jitter + crop (+ horizontal flip): resize the short side to a random length in ``short_side``
    (inclusive), take a random ``crop_size`` square, flip with probability 0.5."""
    low, high = short_side
    if not crop_size <= low <= high:
        raise ValueError(f"need crop_size <= short_side[0] <= short_side[1], got {crop_size} and {short_side}")
    ops: list[v2.Transform] = [v2.RandomShortestSize(list(range(low, high + 1))), v2.RandomCrop(crop_size)]
    if flip:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose(ops)


def eval_transform(crop_size: int, short_side: int) -> Transform:
    """Deterministic single view: resize the short side to ``short_side``, then a centre ``crop_size`` square."""
    return v2.Compose([v2.Resize(short_side), v2.CenterCrop(crop_size)])


def strong_spatial_transform(num_ops: int = 2, magnitude: int = 9) -> Transform:
    """RandAugment with one draw of ``num_ops`` ops per clip, applied identically to all K frames."""
    return v2.RandAugment(num_ops=num_ops, magnitude=magnitude)


def resize_short_side(clip: Tensor, size: int) -> Tensor:
    """``(K, C, H, W)`` -> ``(K, C, H', W')`` with ``min(H', W') == size``, aspect ratio kept."""
    return TF.resize(clip, [size])


def spatial_crops(clip: Tensor, n: int, crop_size: int) -> list[Tensor]:
    """``n`` square crops ``(K, C, crop_size, crop_size)`` for multi-view testing.

    Crops are centred on the short axis and evenly spread along the long axis: ``n = 1`` is the centre crop,
    ``n = 3`` is left/centre/right (top/centre/bottom for portrait clips). Resize the short side first.
    """
    h, w = clip.shape[-2:]
    if min(h, w) < crop_size:
        raise ValueError(f"clip {h}x{w} is smaller than the crop {crop_size}; resize its short side first")
    if n < 1:
        raise ValueError(f"need at least one crop, got {n}")
    long_free, short_free = max(h, w) - crop_size, min(h, w) - crop_size
    starts = [long_free // 2] if n == 1 else [round(i * long_free / (n - 1)) for i in range(n)]
    crops = []
    for start in starts:
        top, left = (short_free // 2, start) if w >= h else (start, short_free // 2)
        crops.append(clip[..., top : top + crop_size, left : left + crop_size])
    return crops


def normalize(clip: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(K, C, H, W)`` uint8 (0..255) or float (0..1) -> normalised float ``(C, K, H, W)``."""
    clip = clip.float() / 255.0 if clip.dtype == torch.uint8 else clip.float()
    mean_t = torch.tensor(mean, dtype=clip.dtype).view(1, -1, 1, 1)  # (1, C, 1, 1)
    std_t = torch.tensor(std, dtype=clip.dtype).view(1, -1, 1, 1)  # (1, C, 1, 1)
    return ((clip - mean_t) / std_t).transpose(0, 1)  # (C, K, H, W)


def per_element_views(frames: Tensor, layout: ElementLayout, transform: Transform) -> Tensor:
    """``transform`` drawn independently for each element's frames of ``frames (K, C, H, W)``; the frames keep
    their positions. The reference's strong view: each frame group gets its own crop and flip."""
    out: list[Tensor | None] = [None] * layout.num_frames
    for positions in layout.elements:
        view = transform(frames[list(positions)])  # (L, C, h, w), one draw for the element
        for j, p in enumerate(positions):
            out[p] = view[j]
    return torch.stack(out)  # (K, C, h, w)


def channel_dropout(clip: Tensor, layout: ElementLayout, p: float, generator: torch.Generator) -> Tensor:
    """Zero each colour channel of each element of a normalised ``clip (C, K, H, W)`` with probability ``p`` and
    scale the kept ones by ``1 / (1 - p)`` (the reference's ``dropout2d(0.2)`` on each element's ``(B, C, T, H, W)``)."""
    if p <= 0.0:
        return clip
    out = clip.clone()
    for positions in layout.elements:
        keep = (torch.rand(clip.shape[0], generator=generator) >= p).to(clip.dtype) / (1.0 - p)  # (C,)
        out[:, list(positions)] *= keep[:, None, None, None]
    return out


# ---------------------------------------------------------------------------------------------- temporal

TemporalPerturbation = Callable[[ElementLayout, torch.Generator], Tensor]


def mod_perturb(layout: ElementLayout, rng: torch.Generator) -> Tensor:
    """Moderate temporal perturbation: each fine element's frames in reverse time order; context untouched."""
    idx = torch.arange(layout.num_frames)
    for positions in layout.fine:
        where = torch.tensor(positions)
        idx[where] = where.flip(0)
    return idx


def spatial_only(layout: ElementLayout, rng: torch.Generator) -> Tensor:
    """No temporal change (the strong view differs only spatially)."""
    return torch.arange(layout.num_frames)


def slow(layout: ElementLayout, rng: torch.Generator) -> Tensor:
    """T-drop: keep every other frame (random phase) and show each twice, e.g. 0,0,2,2,... or 1,1,3,3,..."""
    k = layout.num_frames
    phase = int(torch.randint(2, (1,), generator=rng))
    return ((torch.arange(k) // 2) * 2 + phase).clamp(max=k - 1)


def all_shuffle(layout: ElementLayout, rng: torch.Generator) -> Tensor:
    """A uniformly random order of all K frames."""
    return torch.randperm(layout.num_frames, generator=rng)


def local_shuffle(layout: ElementLayout, rng: torch.Generator) -> Tensor:
    """Shuffle inside consecutive windows of ``max(2, K // 4)`` frames (the last window may be shorter)."""
    k = layout.num_frames
    window = max(2, k // 4)
    parts = [start + torch.randperm(min(window, k - start), generator=rng) for start in range(0, k, window)]
    return torch.cat(parts)


def warping(layout: ElementLayout, rng: torch.Generator) -> Tensor:
    """Monotone random time warp: playback speed drawn per step in [0.25, 1.75], ends pinned to f0 and f(K-1)."""
    k = layout.num_frames
    speed = 0.25 + 1.5 * torch.rand(k - 1, generator=rng, dtype=torch.float64)  # (K-1,)
    time = torch.cat([speed.new_zeros(1), speed.cumsum(0)])  # (K,) non-decreasing
    return (time / time[-1] * (k - 1)).round().long()


def t_half(layout: ElementLayout, rng: torch.Generator) -> Tensor:
    """Only the first or the second half of the clip (random), stretched to K frames."""
    k = layout.num_frames
    half = max(1, k // 2)
    start = 0 if int(torch.randint(2, (1,), generator=rng)) == 0 else k - half
    return start + torch.arange(k) * half // k


def all_reverse(layout: ElementLayout, rng: torch.Generator) -> Tensor:
    """The whole clip backwards."""
    return torch.arange(layout.num_frames).flip(0)


TEMPORAL_PERTURBATIONS: dict[str, TemporalPerturbation] = {
    "mod-perturb": mod_perturb,
    "spatial-only": spatial_only,
    "slow": slow,
    "all-shuffle": all_shuffle,
    "local-shuffle": local_shuffle,
    "warping": warping,
    "t-half": t_half,
    "all-reverse": all_reverse,
}


def temporal_perturbation(name: str) -> TemporalPerturbation:
    """Look up a perturbation by name, with a clear error listing the valid names."""
    if name not in TEMPORAL_PERTURBATIONS:
        raise ConfigError(f"unknown temporal perturbation {name!r}; choose one of {sorted(TEMPORAL_PERTURBATIONS)}")
    return TEMPORAL_PERTURBATIONS[name]
