"""The bridge's LLM: FastChat-equal prompts, tiny LLaMA in fp32/8-bit/4-bit, embedded SmolLM2, bad sources."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bridge_fixtures import tiny_llama

from bridge.llm import LOCK_NAME, VIDEO_PLACEHOLDER, LLMConfig, PromptTemplate, embedded_smollm2_path, load_llm
from common.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("llama"))


HISTORY = [{"role": "user", "content": "What apparatus is this?"}, {"role": "assistant", "content": "The beam."}]


@pytest.mark.parametrize("history", [[], HISTORY])
def test_vicuna_prompt_equals_fastchat(llama_dir, history):
    from fastchat.conversation import get_conv_template
    from transformers import AutoTokenizer

    template = PromptTemplate("vicuna_v1.1", AutoTokenizer.from_pretrained(llama_dir))
    conv = get_conv_template("vicuna_v1.1")
    turns = [m["content"] for m in history] + ["What move is this?", None]
    turns[0] = f"{VIDEO_PLACEHOLDER}\n{turns[0]}"
    for i, text in enumerate(turns):
        conv.append_message(conv.roles[i % 2], text)
    assert template.render("What move is this?", history) == conv.get_prompt()
    prompt, answer = template.with_answer("What move is this?", "salto backward tucked", history)
    conv.update_last_message("salto backward tucked")
    assert prompt + answer == conv.get_prompt()  # "... ASSISTANT: salto backward tucked</s>"


def test_template_choice_and_validation(llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama_dir)
    assert PromptTemplate.choose("/models/vicuna-7b-v1.1", tok) == "vicuna_v1.1"
    assert PromptTemplate.choose("/models/any", tok) == "vicuna_v1.1"  # no chat template
    with pytest.raises(ConfigError, match="needs a tokenizer with a chat template"):
        PromptTemplate("chat", tok)
    with pytest.raises(ConfigError, match="llm.quantization='3bit'"):
        load_llm(LLMConfig(path=str(llama_dir), quantization="3bit"))


@pytest.mark.parametrize("quantization", [None, "8bit", "4bit"])
def test_tiny_llama_loads_and_generates(llama_dir, quantization):
    llm = load_llm(LLMConfig(path=str(llama_dir), quantization=quantization))
    assert llm.template.name == "vicuna_v1.1" and llm.width == 64
    assert not any(p.requires_grad for p in llm.model.parameters())
    if quantization == "8bit":
        import bitsandbytes as bnb

        assert isinstance(llm.model.model.layers[0].mlp.up_proj, bnb.nn.Linear8bitLt)
    elif quantization == "4bit":
        import bitsandbytes as bnb

        assert isinstance(llm.model.model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)
    ids = llm.tokenizer("USER: what move ASSISTANT:", return_tensors="pt")
    assert ids.input_ids[0, 0] == llm.tokenizer.bos_token_id
    out = llm.model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=llm.tokenizer.pad_token_id)
    assert out.shape[1] > ids.input_ids.shape[1]


def test_bad_llm_sources(tmp_path, llama_dir):
    with pytest.raises(DataError, match="no such LLM folder"):
        load_llm(LLMConfig(path=str(tmp_path / "nope")))
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((llama_dir / "config.json").read_text())
    with pytest.raises(DataError, match="no tokenizer in the LLM folder"):
        load_llm(LLMConfig(path=str(bare)))
    from gguf import GGUFWriter

    gguf = tmp_path / "gpt2.gguf"
    writer = GGUFWriter(str(gguf), "gpt2")
    writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(DataError, match=r"gpt2\.gguf: GGUF architecture 'gpt2' is not supported"):
        load_llm(LLMConfig(path=str(gguf)))


@pytest.mark.slow
def test_embedded_smollm2_loads_and_generates():
    path = embedded_smollm2_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    llm = load_llm(LLMConfig())
    assert type(llm.model).__name__ == "LlamaForCausalLM" and llm.width == 576
    assert llm.template.name == "chat"
    assert sum(p.numel() for p in llm.model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    prompt = llm.template.render("What is the capital of France? Answer in one word.", video=False)
    ids = llm.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = llm.model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in llm.tokenizer.decode(out[0, ids.input_ids.shape[1]:])
    prompt, answer = llm.template.with_answer("What move?", "salto backward tucked")
    assert prompt.count(VIDEO_PLACEHOLDER) == 1 and answer == "salto backward tucked<|im_end|>\n"


@pytest.mark.slow
def test_embedded_smollm2_in_bfloat16_is_unpacked_and_loads_quietly(capfd, monkeypatch):
    # the embedded bridge configs load SmolLM2 in bf16; transformers then advises float32 "because the weights stay
    # packed", which does not hold for this load: the weights are plain bf16 Linear weights
    import os

    session_cache = os.environ["SEFAR_LLM_CACHE"]  # the test session's own (tests/conftest.py)
    monkeypatch.setenv("SEFAR_LLM_CACHE", "off")  # read the GGUF file itself, not the unpacked copy
    llm = load_llm(LLMConfig(dtype="bfloat16"))
    q_proj = llm.model.model.layers[0].self_attn.q_proj
    assert type(q_proj) is torch.nn.Linear and q_proj.weight.dtype == torch.bfloat16
    assert "fastest in float32" not in capfd.readouterr().err
    import logging

    assert logging.getLogger("transformers.quantizers.quantizer_gguf").filters == []  # the filter is removed
    # the unpacked copy (in the test session's cache) is the same model: same tokens, template and logits
    monkeypatch.setenv("SEFAR_LLM_CACHE", session_cache)
    cached = load_llm(LLMConfig(dtype="bfloat16"))
    assert any(p.name.startswith("SmolLM2-135M-Instruct.Q4_1-") for p in Path(session_cache).iterdir())
    assert cached.template.name == llm.template.name == "chat" and cached.source == llm.source
    prompt = llm.template.render("What move? Answer in one word.", video=False)
    ids = llm.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    for special in (False, True):
        assert cached.tokenizer(prompt, add_special_tokens=special).input_ids == \
            llm.tokenizer(prompt, add_special_tokens=special).input_ids
    with torch.no_grad():
        assert torch.equal(cached.model(**ids).logits, llm.model(**ids).logits)


def _llama_gguf(path, note="a"):
    """A GGUF file with the llama architecture and no tensors: enough for the architecture check."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_string("general.name", note)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def fake_gguf_reads(llama_dir, monkeypatch):
    """transformers' GGUF reading replaced by the tiny LLaMA folder; returns the list of GGUF reads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reads = []
    tokenizer_load, model_load = AutoTokenizer.from_pretrained, AutoModelForCausalLM.from_pretrained

    def tokenizer(folder, gguf_file=None, **kw):
        return tokenizer_load(llama_dir if gguf_file else folder, **kw)

    def model(folder, gguf_file=None, **kw):
        if gguf_file:
            reads.append(gguf_file)
        return model_load(llama_dir if gguf_file else folder, **kw)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tokenizer)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", model)
    return reads


def test_a_gguf_is_unpacked_once_then_read_from_its_folder(tmp_path, llama_dir, monkeypatch, fake_gguf_reads):
    from bridge.llm import UNPACKED_MARK, unpacked_gguf

    cache = tmp_path / "cache"
    monkeypatch.setenv("SEFAR_LLM_CACHE", str(cache))
    gguf = _llama_gguf(tmp_path / "m.gguf")
    first = load_llm(LLMConfig(path=str(gguf)))
    assert fake_gguf_reads == ["m.gguf"]
    folders = [p for p in cache.iterdir() if p.name != LOCK_NAME]
    assert len(folders) == 1 and folders[0].name.startswith("m-") and (folders[0] / UNPACKED_MARK).is_file()
    assert {p.name for p in folders[0].iterdir()} >= {"config.json", "model.safetensors", "tokenizer_config.json"}
    second = load_llm(LLMConfig(path=str(gguf)))
    assert fake_gguf_reads == ["m.gguf"]  # read from the folder, not the GGUF file
    assert second.source == first.source == str(gguf)
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k]), k
    _llama_gguf(gguf, note="b")  # another file under the same name: unpacked again, beside the first
    assert unpacked_gguf(gguf) != folders[0] and len([p for p in cache.iterdir() if p.name != LOCK_NAME]) == 2
    assert fake_gguf_reads == ["m.gguf", "m.gguf"]


def test_loads_started_together_unpack_once(tmp_path, llama_dir, monkeypatch, fake_gguf_reads):
    """Two loads at once (two processes of one launch, test workers): the second waits for the first one's folder
    instead of reading the GGUF file too. flock excludes separate opens of the lock file, threads included."""
    import threading
    import time

    from bridge.llm import unpacked_gguf

    monkeypatch.setenv("SEFAR_LLM_CACHE", str(tmp_path / "cache"))
    gguf = _llama_gguf(tmp_path / "m.gguf")
    from transformers import AutoModelForCausalLM

    read = AutoModelForCausalLM.from_pretrained

    def slow_read(*args, **kw):  # a read long enough for the other thread to arrive while it runs
        time.sleep(0.5)
        return read(*args, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", slow_read)
    found = [None, None]
    threads = [threading.Thread(target=lambda i=i: found.__setitem__(i, unpacked_gguf(gguf))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake_gguf_reads == ["m.gguf"] and found[0] == found[1] and found[0].is_dir()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [LOCK_NAME, found[0].name]


def test_a_cache_on_a_file_system_without_locks_still_unpacks(tmp_path, llama_dir, monkeypatch, fake_gguf_reads):
    import fcntl

    from bridge.llm import UNPACKED_MARK, unpacked_gguf

    def no_locks(*args):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.setenv("SEFAR_LLM_CACHE", str(tmp_path / "cache"))
    folder = unpacked_gguf(_llama_gguf(tmp_path / "m.gguf"))
    assert (folder / UNPACKED_MARK).is_file() and fake_gguf_reads == ["m.gguf"]


def test_the_unpacked_cache_can_be_off_unwritable_or_damaged(tmp_path, monkeypatch, fake_gguf_reads, caplog):
    import logging

    from bridge.llm import llm_cache_dir, unpacked_gguf

    gguf = _llama_gguf(tmp_path / "m.gguf")
    monkeypatch.setenv("SEFAR_LLM_CACHE", "off")
    assert llm_cache_dir() is None and unpacked_gguf(gguf) is None
    load_llm(LLMConfig(path=str(gguf)))
    assert fake_gguf_reads == ["m.gguf"]
    monkeypatch.delenv("SEFAR_LLM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert llm_cache_dir() == tmp_path / "xdg" / "sefar" / "llm"
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    monkeypatch.setenv("SEFAR_LLM_CACHE", str(blocked / "cache"))  # cannot be created: the GGUF is read as before
    with caplog.at_level(logging.WARNING):
        assert load_llm(LLMConfig(path=str(gguf))).model is not None
    assert "cannot keep m.gguf unpacked" in caplog.text
    assert fake_gguf_reads == ["m.gguf"] * 2  # the failed cache costs no extra read
    monkeypatch.setenv("SEFAR_LLM_CACHE", str(tmp_path / "small"))
    monkeypatch.setattr("bridge.llm.UNPACK_LIMIT", 10)  # a file over the limit is read as GGUF, never unpacked
    assert unpacked_gguf(gguf) is None and not (tmp_path / "small").exists()
    monkeypatch.setattr("bridge.llm.UNPACK_LIMIT", 2 << 30)
    monkeypatch.setenv("SEFAR_LLM_CACHE", str(tmp_path / "cache"))
    folder = unpacked_gguf(gguf)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(DataError, match="model.safetensors: unreadable LLM weights"):
        load_llm(LLMConfig(path=str(gguf)))
    assert not list((tmp_path / "cache").glob(".m-*"))  # no temporary folder left behind


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_loads_bf16_only_where_the_machine_computes_it_natively(llama_dir, monkeypatch, native):
    import torch

    monkeypatch.setattr("common.devices.native_bf16", lambda: native)
    llm = load_llm(LLMConfig(path=str(llama_dir), dtype="auto"))
    assert llm.model.get_input_embeddings().weight.dtype == (torch.bfloat16 if native else torch.float32)
    with pytest.raises(ConfigError, match="llm.dtype='half': use one of .* or auto"):
        load_llm(LLMConfig(path=str(llama_dir), dtype="half"))


# ------------------------------------------------------------------------------- the GGUF architecture check


def _gguf_bytes(pairs: list[tuple[str, int, bytes]], version: int = 3) -> bytes:
    """A GGUF header (no tensors) with the given key-value pairs, each ``(key, value type, value bytes)``."""
    import struct

    out = b"GGUF" + struct.pack("<IQQ", version, 0, len(pairs))
    for key, kind, value in pairs:
        out += struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", kind) + value
    return out


def _gguf_str(text: str) -> bytes:
    import struct

    return struct.pack("<Q", len(text.encode())) + text.encode()


def _gguf_header_with_the_architecture_last() -> bytes:
    """Every value type before ``general.architecture``: scalars, a string, arrays of strings and of numbers."""
    import struct

    tokens = [f"tok{i}" for i in range(300)]
    pairs = [("u8", 0, b"\x01"), ("i8", 1, b"\xff"), ("u16", 2, struct.pack("<H", 7)),
             ("i16", 3, struct.pack("<h", -7)),
             ("u32", 4, struct.pack("<I", 7)), ("i32", 5, struct.pack("<i", -7)), ("f32", 6, struct.pack("<f", 0.5)),
             ("bool", 7, b"\x01"), ("name", 8, _gguf_str("SmolLM2 ünïcode")), ("u64", 10, struct.pack("<Q", 2**40)),
             ("i64", 11, struct.pack("<q", -(2**40))), ("f64", 12, struct.pack("<d", 0.25)),
             ("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, len(tokens)) + b"".join(map(_gguf_str, tokens))),
             ("scores", 9, struct.pack("<IQ", 6, 300) + struct.pack("<300f", *range(300))),
             ("nested", 9, struct.pack("<IQ", 9, 2) + struct.pack("<IQ", 8, 2) + _gguf_str("a") + _gguf_str("bc")
              + struct.pack("<IQ", 4, 3) + struct.pack("<3I", 1, 2, 3)),
             ("general.architecture", 8, _gguf_str("llama"))]
    return _gguf_bytes(pairs)


def test_gguf_architecture_is_read_from_the_header_alone(tmp_path):
    """The header walk finds the architecture behind every kind of value, agrees with the gguf library on files
    its writer made, and reads the embedded SmolLM2 file's."""
    from gguf import GGUFReader, GGUFWriter

    from bridge.llmsource import _gguf_architecture

    last = tmp_path / "last.gguf"
    last.write_bytes(_gguf_header_with_the_architecture_last())
    assert _gguf_architecture(last) == "llama"
    assert bytes(GGUFReader(str(last)).fields["general.architecture"].parts[-1]).decode() == "llama"
    for arch in ("llama", "gpt2", "mistral"):
        path = tmp_path / f"{arch}.gguf"
        writer = GGUFWriter(str(path), arch)
        writer.add_string("general.name", "x")
        writer.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])
        writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        assert _gguf_architecture(path) == arch
    assert _gguf_architecture(embedded_smollm2_path()) == "llama"


def test_a_damaged_gguf_header_is_one_error_naming_the_file(tmp_path):
    import struct

    from bridge.llmsource import _gguf_architecture

    good = _gguf_header_with_the_architecture_last()
    cases = {
        "cut.gguf": good[: len(good) - 3],  # inside the architecture's string
        "cut_early.gguf": good[:30],
        "magic.gguf": b"GGML" + good[4:],
        "version.gguf": good[:4] + struct.pack("<I", 1) + good[8:],
        "no_arch.gguf": _gguf_bytes([("general.name", 8, _gguf_str("x"))]),
        "arch_type.gguf": _gguf_bytes([("general.architecture", 4, struct.pack("<I", 1))]),
        "kind.gguf": _gguf_bytes([("odd", 13, b""), ("general.architecture", 8, _gguf_str("llama"))]),
        "long.gguf": _gguf_bytes([("general.architecture", 8, struct.pack("<Q", 2**62) + b"llama")]),
        "array.gguf": _gguf_bytes([("a", 9, struct.pack("<IQ", 4, 2**60)), ("general.architecture", 8,
                                                                          _gguf_str("llama"))]),
        "utf8.gguf": _gguf_bytes([("general.architecture", 8, struct.pack("<Q", 2) + b"\xff\xfe")]),
        "strings.gguf": _gguf_bytes([("a", 9, struct.pack("<IQ", 8, 2**60) + bytes(64)),
                                     ("general.architecture", 8, _gguf_str("llama"))]),
        "deep.gguf": _gguf_bytes([("a", 9, struct.pack("<IQ", 9, 1) * 6 + struct.pack("<IQ", 4, 0)),
                                  ("general.architecture", 8, _gguf_str("llama"))]),
        "array_kind.gguf": _gguf_bytes([("a", 9, struct.pack("<IQ", 13, 1)),
                                        ("general.architecture", 8, _gguf_str("llama"))]),
        "empty.gguf": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=rf"{name}: not a readable GGUF file"):
            _gguf_architecture(tmp_path / name)
    folder = tmp_path / "a_folder.gguf"  # unreadable as a file
    folder.mkdir()
    with pytest.raises(DataError, match=r"a_folder\.gguf: not a readable GGUF file"):
        _gguf_architecture(folder)
    cut = tmp_path / "cut_anywhere.gguf"
    for end in range(0, len(good), 7):  # the architecture is the last pair: any cut loses it
        cut.write_bytes(good[:end])
        with pytest.raises(DataError, match="not a readable GGUF file"):
            _gguf_architecture(cut)


def test_gguf_is_parsed_once_within_the_block_and_restored_after(tmp_path):
    import gguf

    from bridge.llm import _gguf_parsed_once

    plain_reader, plain_map = gguf.GGUFReader, gguf.get_tensor_name_map
    file = _llama_gguf(tmp_path / "m.gguf")
    arch = gguf.MODEL_ARCH.LLAMA
    with pytest.raises(RuntimeError, match="inside"), _gguf_parsed_once():
        reader = gguf.GGUFReader(file)
        assert gguf.GGUFReader(str(file)) is reader  # one parse per file, however it is named
        assert reader.fields["general.name"].contents() == "a"
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
        assert gguf.get_tensor_name_map(arch, 3) is not gguf.get_tensor_name_map(arch, 2)
        raise RuntimeError("inside")  # an error inside still restores the module
    assert gguf.GGUFReader is plain_reader and gguf.get_tensor_name_map is plain_map
    assert gguf.GGUFReader(file) is not gguf.GGUFReader(file)


def test_unpacking_parses_the_gguf_once(tmp_path, monkeypatch, fake_gguf_reads):
    import gguf
    from transformers import AutoModelForCausalLM

    from bridge.llm import unpacked_gguf

    plain, seen = gguf.GGUFReader, []
    fake = AutoModelForCausalLM.from_pretrained  # the fixture's: reads the tiny LLaMA folder

    def model(folder, gguf_file=None, **kw):
        if gguf_file:  # what transformers' GGUF loader would get for the file the tokenizer read
            seen.append(gguf.GGUFReader(Path(folder) / gguf_file) is gguf.GGUFReader(Path(folder) / gguf_file))
        return fake(folder, gguf_file=gguf_file, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", model)
    monkeypatch.setenv("SEFAR_LLM_CACHE", str(tmp_path / "cache"))
    assert unpacked_gguf(_llama_gguf(tmp_path / "m.gguf")) is not None
    assert seen == [True] and fake_gguf_reads == ["m.gguf"] and gguf.GGUFReader is plain
