"""Foreign weights into the Q-Former adapter: key mapping (BERT, LAVIS, Video-LLaMA) and strict loads with a report.

* BERT (:func:`map_bert_state_dict`, used by :meth:`bridge.adapter.QFormerAdapter.from_pretrained_bert`): BERT's
  self-attention and feed-forward weights initialise the query path, its embedding LayerNorm the Q-Former's input
  LayerNorm; the cross-attention layers start random.
* LAVIS BLIP-2 / InstructBLIP (``Qformer.bert.*``, ``query_tokens``, ``llm_proj``/``t5_proj``/``opt_proj``,
  ``ln_vision``) and Video-LLaMA (``video_Qformer.bert.*``, ``video_query_tokens``,
  ``video_frame_position_embedding``, ``llama_proj``): a key filter (:func:`map_lavis_state_dict`), then a strict
  load with a report (:func:`load_lavis_checkpoint`). With the instruction option an InstructBLIP checkpoint also
  brings its word/position embeddings and the text feed-forward.

Both sources name the Q-Former's layers as BERT does; :data:`QFORMER_RENAMES` turns them into the names of
transformers' ``Blip2QFormerModel``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import Tensor, nn

from bridge.tensorio import read_state_file
from common.errors import DataError

__all__ = ["QFORMER_RENAMES", "LoadReport", "LavisShapes", "load_report", "map_bert_state_dict",
           "map_lavis_state_dict", "read_lavis_state", "lavis_shapes", "fit_to_checkpoint", "load_lavis_checkpoint"]


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


def load_report(module: nn.Module, state: dict[str, Tensor], allowed_missing: str | None = None) -> LoadReport:
    """What loading ``state`` into ``module`` would leave unset (except keys matching ``allowed_missing``) and
    what has no place, wrong shapes included."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not (allowed_missing and re.search(allowed_missing, k))]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
             if k in own and state[k].shape != own[k].shape]
    return LoadReport(missing=missing, unexpected=unexpected + wrong)


# BERT's names of the Q-Former's parts (``bert.`` prefix removed) -> ``Blip2QFormerModel``'s, in this order.
QFORMER_RENAMES = (
    ("embeddings.LayerNorm.", "layernorm."),
    (".attention.self.", ".attention.attention."),
    (".crossattention.self.", ".crossattention.attention."),
)
# BERT's feed-forward: in the Q-Former, the text path's (``intermediate``/``output``; the queries' end in ``_query``).
_TEXT_FFN = re.compile(r"encoder\.layer\.\d+\.(?:intermediate|output)\.")


def _qformer_name(name: str) -> str:
    for old, new in QFORMER_RENAMES:
        name = name.replace(old, new)
    return name


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
        if instruction and _TEXT_FFN.match(name):
            mapped[name] = value  # the text feed-forward keeps BERT's names
        name = _qformer_name(name)
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
    """LAVIS BLIP-2 / InstructBLIP or Video-LLaMA keys -> :class:`~bridge.adapter.QFormerAdapter` keys.

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
        text_ffn = [k for k in mapped if k.startswith("qformer.") and _TEXT_FFN.match(k.removeprefix("qformer."))]
        for k in text_ffn:
            del mapped[k]
        ignored += text_ffn
    return mapped, ignored


def _map_lavis_key(key: str) -> str | None:
    """One key's new name; ``""`` for known keys without a counterpart, None for unknown ones."""
    for prefix in ("video_Qformer.bert.", "Qformer.bert."):
        if key.startswith(prefix):
            return "qformer." + _qformer_name(key.removeprefix(prefix))
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


def read_lavis_state(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict of a LAVIS / Video-LLaMA checkpoint file (``{"model": state}`` or a bare state dict)."""
    path = Path(path)
    try:
        state = read_state_file(path)
    except (OSError, RuntimeError) as err:
        raise DataError(path, f"unreadable checkpoint ({' '.join(str(err).split())[:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    return state


@dataclass(frozen=True)
class LavisShapes:
    """What a checkpoint fixes about the adapter before it is built."""

    vision_width: int | None  # the width its Q-Former cross-attends to (BLIP-2: EVA ViT-g's 1408)
    projection: bool  # it brings the projection into the LLM (llm_proj / llama_proj ...)
    projection_width: int | None  # that projection's output width (the LLM's)


def lavis_shapes(state: dict[str, Tensor]) -> LavisShapes:
    width = None
    for key, value in state.items():
        if re.search(r"Qformer\.bert\.encoder\.layer\.\d+\.crossattention\.self\.key\.weight$", key):
            width = int(value.shape[1])
            break
    proj = next((v for k, v in state.items() if k.startswith(_PROJECTIONS) and k.endswith(".weight")), None)
    return LavisShapes(width, proj is not None, None if proj is None else int(proj.shape[0]))


def fit_to_checkpoint(adapter_cfg, shapes: LavisShapes) -> tuple[object, list[str]]:
    """The :class:`~bridge.adapter.AdapterConfig` a checkpoint of ``shapes`` loads into, and notes saying what
    changed: its Q-Former's cross-attention width (a learned input projection maps the encoder's tokens to it when
    they differ) and, when it brings the projection into the LLM, no output LayerNorm (which would re-normalise
    what that projection was trained to give)."""
    changes, notes = {}, []
    if shapes.vision_width and adapter_cfg.vision_width is None and shapes.vision_width != adapter_cfg.feature_dim:
        changes["vision_width"] = shapes.vision_width
        notes.append(f"the checkpoint's Q-Former cross-attends to width {shapes.vision_width}: a learned input "
                     f"projection maps the encoder's {adapter_cfg.feature_dim}-wide tokens to it")
    if shapes.projection and adapter_cfg.output_norm:
        changes["output_norm"] = False
        notes.append("the checkpoint brings its projection into the LLM: kept as trained (no output LayerNorm)")
    return replace(adapter_cfg, **changes), notes


def load_lavis_checkpoint(adapter: nn.Module, path: str | os.PathLike,
                          state: dict[str, Tensor] | None = None) -> LoadReport:
    """Load a LAVIS / Video-LLaMA checkpoint (``{"model": state}`` or a bare state dict) into ``adapter`` (a
    :class:`~bridge.adapter.QFormerAdapter`); ``state``: the file's state dict when already read.

    Strict: every mapped key must exist with its shape, or :class:`DataError` names them. Adapter keys the
    checkpoint does not provide (e.g. the element embedding, absent from LAVIS; the input projection of an adapter
    whose encoder width differs from the checkpoint's) stay initialised and are listed as ``missing`` in the
    returned report. Video-LLaMA's frame position embedding (row 0 = the first frame) fills the adapter's rows
    1.. (row 0 is the adapter's slot for tokens that summarise a clip or element, which keeps its initialisation).
    With ``adapter.cfg.instruction`` the Q-Former's text input is loaded too (``use_qformer_text_input``); rows of
    the checkpoint's word embedding beyond the adapter's vocabulary (LAVIS appends a ``[DEC]`` token to
    bert-base-uncased's 30522) are dropped and listed in ``ignored``: the tokenizer of the Q-Former's BERT never
    produces them.
    """
    path = Path(path)
    if state is None:
        state = read_lavis_state(path)
    mapped, ignored = map_lavis_state_dict(state, use_qformer_text_input=adapter.cfg.instruction)
    words = mapped.get("text_embeddings.word_embeddings.weight")
    rows = adapter.cfg.vocab_size
    if (words is not None and words.ndim == 2 and words.shape[0] > rows
            and words.shape[1] == adapter.text_embeddings.word_embeddings.weight.shape[1]):
        mapped["text_embeddings.word_embeddings.weight"] = words[:rows]
        ignored.append(f"Qformer.bert.embeddings.word_embeddings.weight[{rows}:{words.shape[0]}]")
    frames = mapped.get("frame_embed.weight")
    own = adapter.frame_embed.weight
    if frames is not None and frames.ndim == 2 and frames.shape[1] == own.shape[1]:
        keep = min(frames.shape[0], own.shape[0] - 1)
        merged = own.detach().clone()
        merged[1: 1 + keep] = frames[:keep].to(merged.dtype)
        mapped["frame_embed.weight"] = merged
        if keep < frames.shape[0]:
            ignored.append(f"video_frame_position_embedding.weight[{keep}:{frames.shape[0]}]")
    report = load_report(adapter, mapped)
    report.ignored = ignored
    if report.unexpected:
        raise DataError(path, f"checkpoint keys with no place in the adapter: {report.summary()}")
    adapter.load_state_dict(mapped, strict=False)
    return report
