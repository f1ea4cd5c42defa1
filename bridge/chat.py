"""Ask about one clip: the SeFAR encoder export, the adapter export and the frozen LLM behind one object.

    chat = VideoChat.load("outputs/quickstart/export/sefar_tiny", "outputs/quickstart/bridge/sefar/adapter", None)
    clip = chat.encode("clip.mp4")                     # frames, layout, top-5, certainty, features
    for piece in chat.stream(clip, [], "What move is this?"):
        print(piece, end="")
    index, scores = chat.choose(clip, "What gymnastics move is this athlete performing?", options)

``sefar bridge ask EXPORT VIDEO "question"`` and the demo use this module. With ``adapter_export=None`` only
:meth:`VideoChat.encode` works (the encoder-only page). An adapter with the instruction option (InstructBLIP) gets
the question being asked as its instruction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bridge.export import load_video_llm, read_adapter_config
from bridge.limits import count_tokens
from bridge.model import VideoLLM
from common.errors import ConfigError

__all__ = ["DEFAULT_ADAPTER_EXPORT", "DEFAULT_ENCODER_EXPORT", "ClipContext", "VideoChat", "clip_features"]

DEFAULT_ENCODER_EXPORT = Path("outputs/quickstart/export/sefar_tiny")
DEFAULT_ADAPTER_EXPORT = Path("outputs/quickstart/bridge/sefar/adapter")
CERTAINTY_PASSES = 10


@dataclass
class ClipContext:
    """Everything the bridge and the demo know about one clip, computed once by :meth:`VideoChat.encode`."""

    frames: np.ndarray  # (K, H, W, 3) uint8, the sampled frames in time order
    layout: list[list[int]]  # frame indices of each dual-level element (fine elements, then context)
    top5: list[tuple[str, float]]  # the encoder's top-5 class names and probabilities
    certainty: dict[str, float]  # Adaptive Regulation of U head passes: mu, sigma, tau1, tau2, eta, passes
    features: dict[str, torch.Tensor]  # one clip's features in the feature-cache layout (the adapter's input)


def display_names(class_names: list[str], categories: list | None = None) -> list[str]:
    """Class names that tell every class apart: a name that several classes share (SynGym and FineGym have "salto
    forward tucked" on FX and on BB) gets its event in front ("FX: salto forward tucked"), or, without categories,
    its class index after it."""
    counts = Counter(class_names)
    out = []
    for i, name in enumerate(class_names):
        if counts[name] == 1:
            out.append(name)
        elif categories is not None and getattr(categories[i], "event", None):
            out.append(f"{categories[i].event}: {name}")
        else:
            out.append(f"{name} (class {i})")
    if len(set(out)) != len(out):  # the same name twice within one event: fall back to indices for all shared ones
        out = [name if counts[name] == 1 else f"{name} (class {i})" for i, name in enumerate(class_names)]
    return out


def clip_features(out: dict) -> dict[str, torch.Tensor]:
    """``FrozenEncoder.features`` output for a batch of one -> the feature-cache layout of that clip."""
    named = {"fused": out["fused"][0], "element_cls": out["element_cls"][0]}
    named.update({f"element_tokens.{i}": t[0] for i, t in enumerate(out["element_tokens"])})
    return {k: v.detach().float().cpu() for k, v in named.items()}


def _certainty(encoder, clip: torch.Tensor, passes: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean class probabilities over ``passes`` head passes with dropout, and Adaptive Regulation of them."""
    import math

    from encoder.ssl import head_passes, pseudo_labels

    model = encoder.model
    with torch.no_grad():
        features = model.forward_features(clip)
        logits = head_passes(model, model.head, features, passes)  # (U, 1, C)
    pseudo = pseudo_labels(logits, adaptive=True)
    mu, sigma = float(pseudo.confidence[0]), float(pseudo.spread[0])
    tau1 = 2 / (1 + math.exp(-(math.exp(mu) - math.e)))
    tau2 = 2 * (1 / (1 + math.exp(-1 / (20.0 * sigma + 1e-9))) - 0.5)
    return pseudo.probs[0], {"mu": mu, "sigma": sigma, "tau1": tau1, "tau2": tau2, "eta": float(pseudo.weight[0]),
                             "passes": passes}


class VideoChat:
    """The loaded encoder (+ adapter and LLM for chat). Build it with :meth:`load`."""

    def __init__(self, encoder, model: VideoLLM | None, config: dict | None) -> None:
        self.encoder = encoder
        self.model = model
        self.config = config or {}
        self.layout = [list(e) for e in encoder.layout.elements]
        self.use_cls = self.config.get("features", {}).get("use_cls", True)

    @classmethod
    def load(cls, encoder_export: str | Path, adapter_export: str | Path | None, llm: str | Path | None,
             device: str = "cpu", quantization: str | None = None) -> "VideoChat":
        """Load the exports. ``llm``: a folder / GGUF file; None -> the adapter export's recorded LLM (the
        embedded SmolLM2 when it records none or its recorded path is not on this machine). ``device`` is checked
        first; the adapter follows the LLM's input embeddings (also under the adapter's recorded device map)."""
        from bridge.devices import check_device
        from encoder.export import load as load_encoder

        device = check_device(device)
        encoder = load_encoder(encoder_export, device=device)
        if adapter_export is None:
            return cls(encoder, None, None)
        features = read_adapter_config(adapter_export).get("features", {})
        if features.get("kind", "sefar") != "sefar":
            raise ConfigError(f"{adapter_export}: this adapter was trained on {features.get('kind')!r} features, "
                              "not on a SeFAR encoder export; chat needs a SeFAR adapter")
        model, config = load_video_llm(adapter_export, llm, device=device, quantization=quantization)
        width = encoder.model.cfg.embed_dim
        if model.adapter.cfg.feature_dim != width:
            raise ConfigError(f"{adapter_export}: the adapter expects features of width {model.adapter.cfg.feature_dim}, "
                              f"the encoder export {encoder_export} gives {width}")
        fused = encoder.model.cfg.fusion_dim
        if model.adapter.cfg.use_fused and model.adapter.cfg.fused_dim != fused:
            raise ConfigError(f"{adapter_export}: the adapter expects fused features of width "
                              f"{model.adapter.cfg.fused_dim}, the encoder export {encoder_export} gives {fused}")
        return cls(encoder, model, config)

    # ------------------------------------------------------------------------------------------------ encode

    def encode(self, video: str | Path) -> ClipContext:
        """Read, sample and encode one clip (raises :class:`common.errors.VideoReadError` on a bad video)."""
        from encoder.data.sampling import segment_frame_indices
        from encoder.data.video import read_frames

        k = self.encoder.preprocess_config.num_frames
        frames = read_frames(video, lambda n: segment_frame_indices(n, k, train=False))  # (K, H, W, 3)
        x = self.encoder.preprocess(frames)  # (1, C, K, img, img)
        with torch.no_grad():
            features = clip_features(self.encoder.features(x))
        probs, certainty = _certainty(self.encoder, x, CERTAINTY_PASSES)
        top = probs.topk(min(5, probs.numel()))
        names = display_names(self.encoder.class_names, self.encoder.categories)
        top5 = [(names[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist())]
        return ClipContext(np.ascontiguousarray(frames), self.layout, top5, certainty, features)

    # -------------------------------------------------------------------------------------------------- chat

    def _need_chat(self) -> VideoLLM:
        if self.model is None:
            raise ConfigError("encoder-only: no adapter export was loaded, so there is no chat")
        return self.model

    def _queries(self, clip: ClipContext, question: str = "") -> torch.Tensor:
        """The clip's query embeddings ``(Q, W)``; ``question``: the adapter's instruction, if it takes one."""
        return self._need_chat().clip_queries(clip.features, clip.layout, self.use_cls, question)

    def count_tokens(self, text: str) -> int:
        """How many LLM tokens ``text`` takes (no special tokens added); the demo bounds questions with it."""
        return count_tokens(self._need_chat().tokenizer, text)

    def stream(self, clip: ClipContext, history: list[dict], question: str,
               max_new_tokens: int = 128) -> Iterator[str]:
        """Yield the answer's text pieces as they are generated (greedy decoding)."""
        model = self._need_chat()
        prompt = model.template.render(question, history)
        yield from model.stream(self._queries(clip, question), prompt, max_new_tokens)

    def choose(self, clip: ClipContext, question: str, options: list[str]) -> tuple[int, list[float]]:
        """The option with the highest length-normalised log-likelihood as the answer, and every option's score."""
        model = self._need_chat()
        if not options:
            raise ValueError("choose needs at least one option")
        prompt = model.template.render(question)
        continuations = [model.template.with_answer(question, o)[1] for o in options]
        _, means = model.option_loglikelihoods(self._queries(clip, question), prompt, continuations)
        return int(np.argmax(means)), means
