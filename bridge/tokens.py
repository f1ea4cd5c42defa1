"""Visual tokens: the cached features of a batch of clips as one padded batch with element and frame positions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["VisualTokens", "visual_tokens"]


@dataclass
class VisualTokens:
    """A batch of visual tokens with their positions; ``mask`` is 1 for real tokens, 0 for padding."""

    tokens: Tensor  # (B, T, D)
    element_ids: Tensor  # (B, T) long
    frame_ids: Tensor  # (B, T) long, 0 for summary tokens, 1 + frame index otherwise
    mask: Tensor  # (B, T) long
    fused: Tensor | None = None  # (B, F): each clip's fused feature, where every clip's features have one

    def to(self, device: torch.device | str) -> "VisualTokens":
        moved = (t.to(device) for t in (self.tokens, self.element_ids, self.frame_ids, self.mask))
        return VisualTokens(*moved, fused=None if self.fused is None else self.fused.to(device))


def visual_tokens(features: list[dict[str, Tensor]], layout: list[list[int]], use_cls: bool = True) -> VisualTokens:
    """Batch the cached features of several clips into :class:`VisualTokens`.

    ``features``: per clip ``element_tokens.<i>`` ``(L_i, N, D)`` (and ``element_cls`` ``(E, D)``);
    ``layout``: the frame indices of each element's L_i frames (fine elements, then context). Each clip's
    ``fused`` ``(F,)`` is stacked into ``fused`` when every clip has one (the adapter reads it with ``use_fused``).
    """
    rows = [_clip_tokens(f, layout, use_cls) for f in features]
    length = max(r[0].shape[0] for r in rows)
    dim = rows[0][0].shape[1]
    batch = len(rows)
    tokens = torch.zeros(batch, length, dim)
    element_ids = torch.zeros(batch, length, dtype=torch.long)
    frame_ids = torch.zeros(batch, length, dtype=torch.long)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for b, (tok, el, fr) in enumerate(rows):
        n = tok.shape[0]
        tokens[b, :n], element_ids[b, :n], frame_ids[b, :n], mask[b, :n] = tok.float(), el, fr, 1
    fused = None
    if all("fused" in f for f in features):
        fused = torch.stack([f["fused"].float() for f in features])
    return VisualTokens(tokens, element_ids, frame_ids, mask, fused)


def _clip_tokens(features: dict[str, Tensor], layout: list[list[int]], use_cls: bool) -> tuple[Tensor, Tensor, Tensor]:
    tokens, elements, frames = [], [], []
    for i, frame_indices in enumerate(layout):
        t = features[f"element_tokens.{i}"]  # (L_i, N, D)
        if t.shape[0] != len(frame_indices):
            raise ValueError(f"element {i} has {t.shape[0]} frames, the layout says {len(frame_indices)}")
        n = t.shape[1]
        tokens.append(t.reshape(-1, t.shape[-1]))  # (L_i * N, D)
        elements.append(torch.full((t.shape[0] * n,), i, dtype=torch.long))
        frames.append(torch.tensor([1 + f for f in frame_indices], dtype=torch.long).repeat_interleave(n))
    if use_cls and "element_cls" in features:
        cls = features["element_cls"]  # (E, D)
        tokens.append(cls)
        elements.append(torch.arange(cls.shape[0]))
        frames.append(torch.zeros(cls.shape[0], dtype=torch.long))
    return torch.cat(tokens), torch.cat(elements), torch.cat(frames)
