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


# GGUF metadata value types: fixed sizes in bytes; 8 is a string, 9 an array (element type, count, elements).
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_MAX_NESTING = 4  # arrays of arrays: the spec allows them, no writer nests deeper


def _gguf_architecture(file: Path) -> str:
    """``general.architecture`` of a GGUF file (v2 or v3, little-endian), read from its header alone.

    ``gguf.GGUFReader`` maps every metadata field into arrays on opening (SmolLM2's 49k-token vocabulary: 6.6 s);
    this walks the key-value pairs, skipping values by their sizes, and stops at the architecture: under 1 ms where
    it comes first (as GGUF writers put it), a few tenths of a second behind a 49k-token vocabulary.
    """
    import struct

    def fail(problem: str) -> DataError:
        return DataError(file, f"not a readable GGUF file ({problem})")

    try:
        size, f = file.stat().st_size, open(file, "rb")
    except OSError as err:
        raise fail(err.strerror or str(err)) from None
    with f:
        def take(n: int) -> bytes:
            data = f.read(n)
            if len(data) != n:
                raise fail("the header is cut short")
            return data

        def number(fmt: str) -> int:
            return struct.unpack("<" + fmt, take(struct.calcsize(fmt)))[0]

        def skip(n: int) -> None:
            if n < 0 or f.tell() + n > size:
                raise fail("a value runs past the end of the file")
            f.seek(n, os.SEEK_CUR)

        def string() -> bytes:
            length = number("Q")
            if length > size - f.tell():
                raise fail("a string runs past the end of the file")
            return take(length)

        def skip_value(kind: int, depth: int = 0) -> None:
            if kind in _GGUF_SIZES:
                skip(_GGUF_SIZES[kind])
            elif kind == _GGUF_STRING:
                skip(number("Q"))
            elif kind == _GGUF_ARRAY:
                if depth >= _GGUF_MAX_NESTING:
                    raise fail(f"arrays nested deeper than {_GGUF_MAX_NESTING}")
                item, count = number("I"), number("Q")
                if item in _GGUF_SIZES:
                    skip(_GGUF_SIZES[item] * count)
                    return
                smallest = 8 if item == _GGUF_STRING else 12  # a string's length; an array's type and count
                if item not in (_GGUF_STRING, _GGUF_ARRAY):
                    raise fail(f"unknown value type {item} in an array")
                if count > (size - f.tell()) // smallest:
                    raise fail("an array runs past the end of the file")
                for _ in range(count):
                    skip_value(item, depth + 1)
            else:
                raise fail(f"unknown value type {kind}")

        if take(4) != b"GGUF":
            raise fail("no GGUF magic")
        version = number("I")
        if version not in (2, 3):
            raise fail(f"version {version}; GGUF 2 and 3 (little-endian) are read")
        _tensors, pairs = number("Q"), number("Q")
        for _ in range(pairs):
            key, kind = string(), number("I")
            if key == b"general.architecture":
                if kind != _GGUF_STRING:
                    raise fail(f"general.architecture has value type {kind}, not a string")
                try:
                    return string().decode("utf-8")
                except UnicodeDecodeError:
                    raise fail("general.architecture is not UTF-8") from None
            skip_value(kind)
        raise fail("no general.architecture")


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
