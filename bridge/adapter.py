"""The Q-Former adapter: frozen-encoder tokens -> a fixed number of LLM input embeddings.

    visual tokens (B, T, D_feat) + element/frame position embedding -> LayerNorm (``ln_vision``)
      -> transformers ``Blip2QFormerModel`` (learned queries (Q, H) cross-attending to the tokens)
      -> projection Linear(H -> W_llm) [-> LayerNorm x scale]  ->  (B, Q, W_llm)

Only this module trains; the encoder and the LLM are frozen. The Q-Former is initialised from a local BERT folder
as BLIP-2 does (:mod:`bridge.bert`; bert-base-uncased in real use, the embedded all-MiniLM-L6-v2 by default):
BERT's self-attention and feed-forward weights initialise the query path, its embedding LayerNorm the Q-Former's
input LayerNorm; the cross-attention layers start random (the key mapping: :mod:`bridge.keymap`). The visual
tokens are batched by :func:`bridge.tokens.visual_tokens`.

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

The fused-feature option (``AdapterConfig.use_fused``, ``adapter.use_fused: true``): the encoder's clip-level
feature (``fused``, the SeFAR fusion head's output that its classifier reads; a frame-wise encoder's feature pooled
over space and time) joins the visual tokens as one more token, through a learned projection from its width
(``fused_dim``) to ``feature_dim`` whose bias marks the token as the clip summary::

    visual tokens (B, T, D) + element/frame positions  ++  Linear(F -> D)(fused (B, F))  ->  (B, T + 1, D)

The element tokens carry what happens where and when; the fused feature is what the encoder's own classifier
reads. (A frame-wise encoder's fused feature is its CLS token again, so there the option adds no information.)

Foreign checkpoints (LAVIS BLIP-2 / InstructBLIP, Video-LLaMA) load through
:func:`bridge.keymap.load_lavis_checkpoint`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn

from bridge.bert import EMBEDDED_BERT, bert_folder, load_qformer_tokenizer, read_bert_config, read_bert_weights
from bridge.keymap import LoadReport, load_report, map_bert_state_dict
from bridge.tokens import VisualTokens
from common.errors import ConfigError, DataError

__all__ = ["AdapterConfig", "QFormerAdapter"]


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
    dropout: float = 0.1  # the Q-Former's hidden and attention dropout (BERT's)
    instruction: bool = False  # InstructBLIP: the question's text also enters the Q-Former (module docstring)
    max_instruction_tokens: int = 128  # the instruction's BERT tokens ([CLS] and [SEP] included) at most
    # Width the Q-Former cross-attends to; None: feature_dim. Otherwise a learned input projection maps the visual
    # tokens to it (e.g. 1408 to reuse a BLIP-2 Q-Former trained on EVA ViT-g features, see bridge.keymap).
    vision_width: int | None = None
    use_fused: bool = False  # also feed the clip's fused feature as one more token (module docstring)
    fused_dim: int | None = None  # width of the fused feature (filled from the features with use_fused)
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


def _bert_config(cfg: AdapterConfig) -> AdapterConfig:
    """``cfg`` with the Q-Former sizes read from its BERT folder (unchanged for ``"random"`` or when set)."""
    if cfg.hidden_size is not None:
        return cfg
    if cfg.qformer == "random":
        raise ConfigError("adapter.qformer=random needs adapter.hidden_size, num_attention_heads, intermediate_size "
                          "and num_layers")
    bert = read_bert_config(bert_folder(cfg.qformer))
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
        if cfg.use_fused and not (isinstance(cfg.fused_dim, int) and cfg.fused_dim > 0):
            raise ConfigError(f"adapter.use_fused needs the fused feature's width (fused_dim={cfg.fused_dim!r})")
        self.tokenizer = None
        if cfg.instruction:
            self.tokenizer = tokenizer if tokenizer is not None else load_qformer_tokenizer(bert_folder(cfg.qformer))
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
            intermediate_size=cfg.intermediate_size, encoder_hidden_size=cfg.vision_width or cfg.feature_dim,
            cross_attention_frequency=cfg.cross_attention_frequency, layer_norm_eps=cfg.layer_norm_eps,
            use_qformer_text_input=cfg.instruction, hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
        )
        self.element_embed = nn.Embedding(cfg.max_elements, cfg.feature_dim)
        self.frame_embed = nn.Embedding(cfg.max_frames + 1, cfg.feature_dim)
        nn.init.normal_(self.element_embed.weight, std=0.02)
        nn.init.normal_(self.frame_embed.weight, std=0.02)
        if cfg.vision_width and cfg.vision_width != cfg.feature_dim:
            self.input_proj = nn.Linear(cfg.feature_dim, cfg.vision_width)
        else:
            self.input_proj = None
        self.ln_vision = nn.LayerNorm(cfg.vision_width or cfg.feature_dim)
        self.query_tokens = nn.Parameter(torch.randn(1, cfg.num_queries, cfg.hidden_size) * 0.02)
        self.qformer = Blip2QFormerModel(qcfg)
        self.proj = nn.Linear(cfg.hidden_size, cfg.llm_width)
        self.out_norm = nn.LayerNorm(cfg.llm_width) if cfg.output_norm else None
        # The LLM's token-embedding std: normalised queries start at the scale the LLM is used to.
        self.out_scale = nn.Parameter(torch.tensor(float(embedding_std))) if cfg.output_norm else None
        if cfg.instruction:  # created last: without the option the random draws above are those of before
            self.text_embeddings = _TextEmbeddings(cfg.vocab_size, cfg.max_position_embeddings, cfg.hidden_size)
        if cfg.use_fused:  # likewise
            self.fused_proj = nn.Linear(cfg.fused_dim, cfg.feature_dim)

    @classmethod
    def from_pretrained_bert(cls, cfg: AdapterConfig, embedding_std: float = 1.0) -> tuple["QFormerAdapter", LoadReport]:
        """A new adapter whose Q-Former starts from ``cfg.qformer`` (a BERT folder or ``"embedded"``)."""
        adapter = cls(cfg, embedding_std)
        if cfg.qformer == "random":
            return adapter, LoadReport()
        folder = bert_folder(cfg.qformer)
        state = read_bert_weights(folder)
        mapped, ignored = map_bert_state_dict(state, adapter.cfg.num_layers, instruction=adapter.cfg.instruction)
        text_keys = [k for k in mapped if k.startswith("embeddings.")]  # the instruction's embeddings
        text = {k.removeprefix("embeddings."): mapped.pop(k) for k in text_keys}
        report = load_report(adapter.qformer, mapped, allowed_missing=r"\.crossattention\.")
        report.ignored = ignored
        if adapter.cfg.instruction:
            text_report = load_report(adapter.text_embeddings, text)
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
        mask = visual.mask
        if self.cfg.use_fused:
            x, mask = self._with_fused(x, mask, visual.fused)
        if self.input_proj is not None:
            x = self.input_proj(x)  # (B, T, vision_width)
        x = self.ln_vision(x)  # (B, T, D_vision)
        queries = self.query_tokens.expand(x.shape[0], -1, -1)  # (B, Q, H)
        if instructions is None:
            out = self.qformer(query_embeds=queries, encoder_hidden_states=x, encoder_attention_mask=mask)
            hidden = out.last_hidden_state
        else:
            text, text_mask = self._instruction_embeds(instructions)  # (B, L, H), (B, L)
            q = queries.shape[1]
            embeds = torch.cat([queries, text.to(queries.dtype)], dim=1)  # (B, Q + L, H)
            self_mask = torch.cat([text_mask.new_ones(text_mask.shape[0], q), text_mask], dim=1)
            # query_length=Q: cross-attention and the query feed-forward on the first Q positions only,
            # the text feed-forward on the rest
            out = self.qformer(query_embeds=embeds, query_length=q, attention_mask=self_mask, encoder_hidden_states=x,
                               encoder_attention_mask=mask)
            hidden = out.last_hidden_state[:, :q]
        y = self.proj(hidden)  # (B, Q, W_llm)
        if self.out_norm is not None:
            y = self.out_norm(y) * self.out_scale
        return y

    def _with_fused(self, x: Tensor, mask: Tensor, fused: Tensor | None) -> tuple[Tensor, Tensor]:
        """``x`` ``(B, T, D)`` with the projected fused feature appended as token T, and the mask to match."""
        if fused is None:
            raise ConfigError("this adapter was built with adapter.use_fused=true but the visual tokens carry no fused "
                              "feature (features without 'fused')")
        if fused.shape != (x.shape[0], self.cfg.fused_dim):
            raise ConfigError(f"fused features of shape {list(fused.shape)}, the adapter expects "
                              f"[{x.shape[0]}, {self.cfg.fused_dim}]: features of another encoder?")
        token = self.fused_proj(fused.to(x.dtype))[:, None]  # (B, 1, D)
        return torch.cat([x, token], dim=1), torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)

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
