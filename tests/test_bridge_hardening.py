"""Bad input to the bridge is one clear error naming the file (or the right answer): the video's place in the
prompt, question lengths, feature caches, adapter exports (shapes, digests), LLM folders, stopping a stream."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time

import pytest
import torch
from bridge_fixtures import LAYOUT_224, fake_features, tiny_adapter_config, tiny_llama
from safetensors.torch import save_file

from bridge.adapter import QFormerAdapter
from bridge.evaluate import evaluate
from bridge.export import WEIGHTS_FILE, load_adapter, load_video_llm, write_adapter_export
from bridge.featurecache import FeatureCache
from bridge.limits import TextLimits
from bridge.llm import VIDEO_PLACEHOLDER, LLMConfig, PromptTemplate, embedded_smollm2_path, load_llm
from bridge.model import VideoLLM
from bridge.qa import read_question_set
from common.errors import ConfigError, DataError
from gymqa.question import Question, write_questions

QUESTION = "What gymnastics move is this athlete performing?"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def model(llama):
    torch.manual_seed(0)
    return VideoLLM(QFormerAdapter(tiny_adapter_config(num_queries=4)), load_llm(LLMConfig(path=str(llama)))).eval()


def _export(folder, llama, llm_width=64, template="vicuna_v1.1", feature_dim=16):
    torch.manual_seed(0)
    adapter = QFormerAdapter(tiny_adapter_config(feature_dim=feature_dim, llm_width=llm_width))
    return write_adapter_export(folder, adapter, llm=LLMConfig(path=str(llama)).to_dict(), template=template,
                                features={"kind": "sefar", "source": "tiny", "layout": LAYOUT_224, "use_cls": True},
                                prompt={"question": QUESTION, "objective": "name"})


def _questions(path, texts, options=("salto", "giant circle", "turn", "handstand")):
    qs = [Question(id=f"q{i}", clip_id=f"clip{i}", question=t, options=tuple(options), answer=0, type="element",
                   level="element") for i, t in enumerate(texts)]
    write_questions(path, qs)
    return path


def _cache(folder, clips, nan: str | None = None):
    """A feature cache of ``clips`` (fake features); ``nan``: a clip whose features hold a NaN."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i, clip in enumerate(clips):
        for name, t in fake_features(seed=i).items():
            tensors[f"{clip}/{name}"] = t.clone()
            if clip == nan and name == "fused":
                tensors[f"{clip}/{name}"][0] = float("nan")
    save_file(tensors, str(folder / "shard_00000.safetensors"), metadata={"clips": json.dumps(clips), "skipped": "{}"})
    shapes = {k.split("/", 1)[1]: list(v.shape) for k, v in tensors.items() if k.startswith(f"{clips[0]}/")}
    manifest = {"format": "sefar-features", "format_version": 1, "dtype": "float32", "shard_size": 256,
                "num_shards": 1, "shapes": shapes, "layout": LAYOUT_224, "clips": {c: 0 for c in clips},
                "done_shards": [0], "skipped": {}, "complete": True}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


# ------------------------------------------------------------------------------------ 1. the video's place


def _around_video(template: PromptTemplate, tokenizer, question: str) -> tuple[list[int], list[int], str]:
    prompt = template.render(question)
    before = tokenizer(prompt.before, add_special_tokens=template.adds_bos)["input_ids"]
    after = tokenizer(prompt.after, add_special_tokens=False)["input_ids"]
    return before, after, prompt.after


@pytest.mark.parametrize("which", ["tiny_llama_sentencepiece", "smollm2_bpe"])
def test_video_placeholder_in_the_question_changes_nothing(which, llama):
    from transformers import AutoTokenizer

    if which == "smollm2_bpe":
        gguf = embedded_smollm2_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        template = PromptTemplate("chat", tokenizer)
    else:
        tokenizer = AutoTokenizer.from_pretrained(llama)
        template = PromptTemplate("vicuna_v1.1", tokenizer)
    asked = f"what move {VIDEO_PLACEHOLDER} is this {VIDEO_PLACEHOLDER}?"
    before, after, text = _around_video(template, tokenizer, "what move is this?")
    before2, after2, text2 = _around_video(template, tokenizer, asked)
    assert before2 == before  # everything up to the video: the same tokens
    assert text2.startswith("\n" + asked) and text.startswith("\nwhat move is this?")  # the question kept verbatim
    tail = len(tokenizer(text[len("\nwhat move is this?"):], add_special_tokens=False)["input_ids"])
    assert after2[-tail:] == after[-tail:]  # the template's end of turn after the question: the same tokens
    assert asked in tokenizer.decode(after2)
    prompt, answer = template.with_answer(asked, "salto")
    assert prompt == template.render(asked) and "salto" in answer


def test_question_with_placeholder_scores_and_streams(model):
    prompt = model.template.render(f"{VIDEO_PLACEHOLDER} what move")
    queries = torch.randn(4, 64)
    embeds = model.prompt_embeds(queries, prompt)
    before, after = model._split_prompt(prompt)
    assert embeds.shape[0] == len(before) + 4 + len(after)
    assert torch.equal(embeds[len(before): len(before) + 4], queries)
    sums, _ = model.option_loglikelihoods(queries, prompt, [" salto</s>", " turn</s>"])
    assert len(sums) == 2
    assert isinstance(model.generate(queries, prompt, 2), str)


# ----------------------------------------------------------------------------------------------- 2. lengths


def test_too_long_question_or_option_is_refused_before_model_work(model, tmp_path):
    long = _questions(tmp_path / "long.jsonl", [QUESTION, "x" * 200_000])
    with pytest.raises(DataError, match=r"long\.jsonl:2: question of 'q1' is too long: 200000 characters"):
        evaluate(model, None, long, tmp_path / "out")
    tokens = _questions(tmp_path / "tokens.jsonl", ["salto " * 300])
    with pytest.raises(DataError, match=r"tokens\.jsonl:1: question of 'q0' is too long: \d+ tokens"):
        evaluate(model, None, tokens, tmp_path / "out")
    option = _questions(tmp_path / "option.jsonl", [QUESTION], options=("salto", "turn " * 2000, "a", "b"))
    with pytest.raises(DataError, match=r"option\.jsonl:1: option 2 of 'q0' is too long"):
        evaluate(model, None, option, tmp_path / "out")
    with pytest.raises(ConfigError, match="the question argument is too long"):
        TextLimits(flag="--max-question-tokens").check_argument("question argument", "salto " * 300, model.tokenizer)


def test_cli_ask_refuses_a_huge_question_in_one_line(tmp_path, capsys):
    from sefar.cli import main

    assert main(["bridge", "ask", str(tmp_path / "none"), "clip.mp4", "x" * 100_000]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "question argument is too long" in err[0] and "--max-question-tokens" in err[0]


# --------------------------------------------------------------------------------------- 3-4. bridge inputs


def test_questions_and_feature_cache_problems_name_the_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.jsonl: empty"):
        read_question_set(empty, ["element"])
    big = tmp_path / "big.jsonl"
    big.write_text('{"id": "q", "frame_length": ' + "9" * 400 + "}\n")
    with pytest.raises(DataError, match=r"big.jsonl:1: invalid JSON: integer .* out of range"):
        read_question_set(big, ["element"])
    cache = FeatureCache(_cache(tmp_path / "cache", ["clipA"]))
    questions = _questions(tmp_path / "q.jsonl", [QUESTION])
    with pytest.raises(DataError, match=r"q.jsonl: none of the 1 questions' clips has features"):
        read_question_set(questions, ["element"], cache)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    for broken in ({k: v for k, v in manifest.items() if k != "shapes"}, manifest | {"layout": [[0]]}):
        (tmp_path / "cache" / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(DataError, match="manifest.json: damaged feature cache manifest"):
            FeatureCache(tmp_path / "cache")
    (tmp_path / "cache" / "manifest.json").write_text(json.dumps(manifest).replace('"num_shards": 1', '"num_shards": NaN'))
    with pytest.raises(DataError, match="manifest.json:1: invalid JSON: NaN"):
        FeatureCache(tmp_path / "cache")


def test_nan_features_are_an_error_naming_shard_and_clip(model, tmp_path):
    cache = FeatureCache(_cache(tmp_path / "cache", ["clip0"], nan="clip0"))
    with pytest.raises(DataError, match=r"shard_00000.safetensors: clip 'clip0': fused holds NaN"):
        evaluate(model, cache, _questions(tmp_path / "q.jsonl", [QUESTION]), tmp_path / "out")
    assert not (tmp_path / "out" / "predictions_likelihood_mean.jsonl").exists()


def test_features_of_another_width_name_the_manifest(model, tmp_path):
    cache = _cache(tmp_path / "cache", ["clip0"])
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["shapes"] = {k: v[:-1] + [8] if k != "fused" else v for k, v in manifest["shapes"].items()}
    (cache / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"manifest.json: the cached features have width 8, the adapter takes width 16"):
        evaluate(model, FeatureCache(cache), _questions(tmp_path / "q.jsonl", [QUESTION]), tmp_path / "out")


# ------------------------------------------------------------------------------------- 4-5. adapter exports


def test_adapter_weights_of_another_shape_or_digest(llama, tmp_path):
    first = _export(tmp_path / "a", llama)
    config = json.loads((first / "config.json").read_text())
    assert len(config["weights"]["sha256"]) == 64
    load_adapter(first)
    other = _export(tmp_path / "b", llama, feature_dim=24)  # another adapter's weights copied over
    shutil.copy(other / WEIGHTS_FILE, first / WEIGHTS_FILE)
    with pytest.raises(DataError, match=r"a/adapter.safetensors: tensor shapes do not match .*element_embed.weight is \[8, 24\]"):
        load_adapter(first)
    wider = _export(tmp_path / "c", llama)
    cfg = json.loads((wider / "config.json").read_text())
    cfg["adapter"]["llm_width"] = 96
    (wider / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match=r"c/adapter.safetensors: tensor shapes do not match.*96"):
        load_adapter(wider)
    same = _export(tmp_path / "d", llama)
    torch.manual_seed(1)
    from safetensors.torch import save_file as save

    save(QFormerAdapter(tiny_adapter_config()).state_dict(), str(same / WEIGHTS_FILE))
    with pytest.raises(DataError, match=r"d/adapter.safetensors: does not match config.json: its SHA-256"):
        load_adapter(same)


def test_old_export_without_digest_loads_with_a_notice(llama, tmp_path, caplog):
    folder = _export(tmp_path / "old", llama)
    config = json.loads((folder / "config.json").read_text())
    del config["weights"]
    (folder / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        load_adapter(folder)
    assert "records no weights digest" in caplog.text
    config["adapter"]["num_queries"] = 1e999
    (folder / "config.json").write_text(json.dumps(config).replace("Infinity", "1e999"))
    with pytest.raises(DataError, match=r"old/config.json:\d+: invalid JSON: number 1e999 is out of range"):
        load_adapter(folder)
    config["adapter"]["num_queries"] = "four"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match=r"old/config.json: num_queries='four': must be an integer"):
        load_adapter(folder)


def test_width_mismatch_says_widths_differ_and_missing_llm_is_noticed(llama, tmp_path, caplog):
    folder = _export(tmp_path / "narrow", llama, llm_width=32, template="chat")
    with pytest.raises(ConfigError, match="widths differ"):
        load_video_llm(folder)
    config = json.loads((folder / "config.json").read_text())
    config["llm"]["path"] = str(tmp_path / "gone")
    (folder / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError, match="widths differ"):
        load_video_llm(folder)
    assert "is not on this machine: using the embedded SmolLM2" in caplog.text


# ------------------------------------------------------------------------------------------ 6. LLM folders


@pytest.mark.parametrize("damage", ["truncated_weights", "truncated_tokenizer", "bert_config", "vocab_size"])
def test_damaged_llm_folder_is_one_clear_error(llama, tmp_path, damage):
    folder = shutil.copytree(llama, tmp_path / "llm", ignore=shutil.ignore_patterns("spm"))
    if damage == "truncated_weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
        match = r"model.safetensors: unreadable LLM weights"
    elif damage == "truncated_tokenizer":
        name = "tokenizer.json" if (folder / "tokenizer.json").is_file() else "tokenizer.model"
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 3])
        match = rf"{name}(:\d+)?: (invalid JSON|cannot load the LLM's tokenizer)"
    else:
        config = json.loads((folder / "config.json").read_text())
        config |= {"model_type": "bert"} if damage == "bert_config" else {"vocab_size": 400}
        (folder / "config.json").write_text(json.dumps(config))
        match = "model_type 'bert' is not a LLaMA-family" if damage == "bert_config" else \
            r"model.safetensors: tensor model.embed_tokens.weight is \[320, 64\] but config.json .* implies \[400, 64\]"
    with pytest.raises(DataError, match=match):
        load_llm(LLMConfig(path=str(folder)))


# ---------------------------------------------------------------------------------------- 9. stopping a stream


def test_closing_the_stream_stops_generation(model, monkeypatch):
    calls = []
    hook = model.llm_model.register_forward_hook(lambda *_: calls.append(time.sleep(0.01)))  # 400 tokens: 4 s
    plain = model._generate_kwargs
    word = tuple(model.tokenizer("salto", add_special_tokens=False)["input_ids"][-1:])  # " salto": a piece per token
    monkeypatch.setattr(model, "_generate_kwargs",
                        lambda *a: plain(*a) | {"min_new_tokens": 400, "sequence_bias": {word: 100.0}})
    try:
        stream = model.stream(torch.randn(4, 64), model.template.render("what move"), max_new_tokens=400)
        next(stream)
        stream.close()
        threads = [t for t in threading.enumerate() if t.name == "VideoLLM.stream"]
        for t in threads:
            t.join(timeout=30)
        assert threads and not any(t.is_alive() for t in threads)
        time.sleep(0.1)
        assert len(calls) < 50  # stopped within a few tokens, not run on to 400
    finally:
        hook.remove()
