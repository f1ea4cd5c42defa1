"""Checks of an LLM source before the libraries load it: a GGUF file, or a Hugging Face folder.

Every problem is one :class:`~common.errors.DataError` naming the file: a GGUF that is cut, random or of
another architecture; a folder whose ``config.json`` is not a LLaMA-family model, whose tokenizer files or
weights are truncated, or whose weights disagree with ``config.json`` (vocabulary size, width, layers). The
folder's weights are compared with the model that ``config.json`` describes, built on the ``meta`` device (no
memory), from the safetensors headers alone. What the libraries still refuse (:func:`loading`) is one line too.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch

from common.errors import ConfigError, DataError
from common.jsonio import read_json, read_json_object

__all__ = ["LLAMA_FAMILY", "check_source", "loading"]

# Architectures whose transformers model is a LLaMA-style decoder taking ``inputs_embeds``.
LLAMA_FAMILY = ("llama", "mistral")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


@contextmanager
def loading(what: str, path: str | os.PathLike):
    """Turn what a library raises while loading ``path`` into one :class:`DataError` (``what``: the LLM's
    tokenizer, weights, ...); our own errors and running out of memory pass through."""
    try:
        yield
    except (DataError, ConfigError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:  # the libraries raise anything from OSError to a bare Exception (tokenizers)
        raise DataError(path, f"cannot load the LLM's {what} ({_one_line(err)})") from None


def _gguf_architecture(file: Path) -> str:
    from gguf import GGUFReader

    try:
        field = GGUFReader(os.fspath(file)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except (KeyError, ValueError, OSError, IndexError) as err:
        raise DataError(file, f"not a readable GGUF file ({err})") from None


def check_source(folder: Path, gguf_file: str | None) -> None:
    """One clear error for a GGUF of another architecture or an unusable model folder (see the module)."""
    if gguf_file is not None:
        arch = _gguf_architecture(folder / gguf_file)
        if arch not in LLAMA_FAMILY:
            raise DataError(folder / gguf_file, f"GGUF architecture {arch!r} is not supported "
                                                f"(LLaMA family: {', '.join(LLAMA_FAMILY)})")
        return
    if not (folder / "config.json").is_file():
        raise DataError(folder, "no config.json: not a Hugging Face model folder")
    config = read_json_object(folder / "config.json")
    kind = config.get("model_type")
    if kind not in LLAMA_FAMILY:
        raise DataError(folder / "config.json", f"model_type {kind!r} is not a LLaMA-family language model "
                                                f"({', '.join(LLAMA_FAMILY)})")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise DataError(folder, f"no tokenizer in the LLM folder (expected {' or '.join(TOKENIZER_FILES)})")
    for name in _JSON_FILES:
        if (folder / name).is_file():
            read_json(folder / name)  # a truncated or damaged file is one error naming it
    shapes = _weight_shapes(folder)
    if shapes:
        _check_weights(folder, shapes)


def _weight_shapes(folder: Path) -> dict[str, tuple[list[int], Path]]:
    """``{tensor name: (shape, file)}`` from the headers of the folder's safetensors weights ({} without any)."""
    from safetensors import SafetensorError, safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise DataError(index, "weight_map must map tensor names to file names")
        files = sorted({folder / Path(v).name for v in weight_map.values()})
    else:
        files = [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else []
    shapes = {}
    for file in files:
        try:
            with safe_open(os.fspath(file), framework="pt") as f:
                shapes.update({k: (list(f.get_slice(k).get_shape()), file) for k in f.keys()})
        except (SafetensorError, OSError) as err:
            raise DataError(file, f"unreadable LLM weights ({_one_line(err)})") from None
    return shapes


def _check_weights(folder: Path, shapes: dict[str, tuple[list[int], Path]]) -> None:
    """The weights' names and shapes must be those of the model ``config.json`` describes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config_path = folder / "config.json"
    layers = {int(m.group(1)) for k in shapes if (m := re.match(r"model\.layers\.(\d+)\.", k))}
    with loading("config", config_path):
        config = AutoConfig.from_pretrained(folder)
    if getattr(config, "num_hidden_layers", None) != len(layers):
        raise DataError(config_path, f"num_hidden_layers={getattr(config, 'num_hidden_layers', None)} but the "
                                     f"weights have {len(layers)} layers")
    with loading("config", config_path), torch.device("meta"):
        expected = {k: list(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        expected.pop("lm_head.weight", None)
        shapes.pop("lm_head.weight", None)
    missing = sorted(expected.keys() - shapes.keys())
    if missing:
        raise DataError(shapes[next(iter(shapes))][1], f"LLM weights lack {', '.join(missing[:3])} "
                                                       f"({len(missing)} tensors that config.json implies)")
    for name, want in expected.items():
        got, file = shapes[name]
        if got != want:
            raise DataError(file, f"tensor {name} is {got} but config.json ({config_path}) implies {want} "
                                  "(vocab_size or hidden sizes disagree with the weights)")
