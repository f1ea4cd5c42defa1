"""bridge.chat.VideoChat on tiny artifacts: a tiny encoder export, a tiny adapter export, a tiny random LLaMA."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from bridge_fixtures import tiny_adapter_config, tiny_llama
from test_export import exported, fake_run  # noqa: F401 (fixtures)

from bridge.adapter import QFormerAdapter
from bridge.chat import DEFAULT_ADAPTER_EXPORT, DEFAULT_ENCODER_EXPORT, ClipContext, VideoChat
from bridge.export import write_adapter_export
from bridge.llm import LLMConfig
from common.errors import ConfigError, VideoReadError


@pytest.fixture(scope="module")
def adapter_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    llama = tiny_llama(root / "llama")
    torch.manual_seed(0)
    adapter = QFormerAdapter(tiny_adapter_config(feature_dim=96, llm_width=64))
    layout = [[1, 5], [3, 7], [0, 2, 4, 6]]
    return write_adapter_export(
        root / "adapter", adapter, llm=LLMConfig(path=str(llama)).to_dict(), template="vicuna_v1.1",
        features={"kind": "sefar", "source": "tiny", "layout": layout, "use_cls": True},
        prompt={"question": "What gymnastics move is this athlete performing?", "objective": "name"},
    )


def test_default_locations():
    assert DEFAULT_ENCODER_EXPORT.as_posix() == "outputs/quickstart/export/sefar_tiny"
    assert DEFAULT_ADAPTER_EXPORT.as_posix() == "outputs/quickstart/bridge/sefar/adapter"


def test_encode_stream_and_choose(exported, fake_run, adapter_export):
    chat = VideoChat.load(exported, adapter_export, None)
    clip = chat.encode(fake_run.parent / "data" / "videos" / "clip0.mp4")
    assert isinstance(clip, ClipContext)
    assert clip.frames.dtype == np.uint8 and clip.frames.ndim == 4 and clip.frames.shape[0] == 8
    assert clip.layout == [[1, 5], [3, 7], [0, 2, 4, 6]]
    assert len(clip.top5) == 5 and all(isinstance(n, str) for n, _ in clip.top5)
    probs = [p for _, p in clip.top5]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert set(clip.certainty) >= {"mu", "sigma", "eta", "tau1", "tau2"}
    assert clip.certainty["eta"] == pytest.approx(clip.certainty["tau1"] * clip.certainty["tau2"], rel=1e-4)
    assert clip.features["element_tokens.2"].shape == (4, 16, 96)

    history = [{"role": "user", "content": "what move"}, {"role": "assistant", "content": "salto"}]
    pieces = list(chat.stream(clip, history, "is it tucked", max_new_tokens=6))
    assert all(isinstance(p, str) for p in pieces)
    queries = chat._queries(clip)
    prompt = chat.model.template.render("is it tucked", history)
    assert "".join(pieces).strip() == chat.model.generate(queries, prompt, max_new_tokens=6)

    options = ["salto backward tucked", "salto forward piked", "giant circle", "turn on one leg"]
    index, scores = chat.choose(clip, "what move", options)
    assert len(scores) == 4 and index == int(np.argmax(scores))
    continuations = [chat.model.template.with_answer("what move", o)[1] for o in options]
    _, brute = chat.model.option_loglikelihoods_bruteforce(queries, chat.model.template.render("what move"),
                                                           continuations)
    assert scores == pytest.approx(brute, abs=1e-4)


def test_encoder_only_and_bad_input(exported, fake_run, adapter_export, tmp_path):
    chat = VideoChat.load(exported, None, None)
    clip = chat.encode(fake_run.parent / "data" / "videos" / "clip1.mp4")
    with pytest.raises(ConfigError, match="encoder-only"):
        next(chat.stream(clip, [], "what move"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(VideoReadError):
        chat.encode(bad)
    llama = adapter_export.parent / "llama"
    other = write_adapter_export(
        tmp_path / "wide", QFormerAdapter(tiny_adapter_config(feature_dim=32, llm_width=64)),
        llm=LLMConfig(path=str(llama)).to_dict(), template="vicuna_v1.1",
        features={"kind": "sefar", "layout": [], "use_cls": True}, prompt={},
    )
    with pytest.raises(ConfigError, match="features of width 32, the encoder export .* gives 96"):
        VideoChat.load(exported, other, None)
    fusion = VideoChat.load(exported, None, None).encoder.model.cfg.fusion_dim
    foreign = write_adapter_export(  # an adapter reading a fused feature of another width than this encoder's
        tmp_path / "fused", QFormerAdapter(replace(tiny_adapter_config(feature_dim=96, llm_width=64), use_fused=True,
                                                   fused_dim=fusion + 1)),
        llm=LLMConfig(path=str(llama)).to_dict(), template="vicuna_v1.1",
        features={"kind": "sefar", "layout": [], "use_cls": True}, prompt={},
    )
    with pytest.raises(ConfigError, match=f"fused features of width {fusion + 1}, the encoder export .* gives {fusion}"):
        VideoChat.load(exported, foreign, None)


def test_display_names_tell_classes_that_share_a_name_apart():
    from bridge.chat import display_names
    from common.finegym import Category

    names = ["salto forward tucked", "split jump", "salto forward tucked"]
    cats = [Category(0, 0, 1, "FX", names[0]), Category(1, 1, 2, "BB", names[1]), Category(2, 2, 3, "BB", names[2])]
    assert display_names(names, cats) == ["FX: salto forward tucked", "split jump", "BB: salto forward tucked"]
    assert display_names(names) == ["salto forward tucked (class 0)", "split jump", "salto forward tucked (class 2)"]
    same_event = [Category(0, 0, 1, "FX", names[0]), cats[1], Category(2, 2, 1, "FX", names[2])]
    assert display_names(names, same_event) == ["salto forward tucked (class 0)", "split jump",
                                                "salto forward tucked (class 2)"]
    assert display_names(["a", "b"]) == ["a", "b"]
