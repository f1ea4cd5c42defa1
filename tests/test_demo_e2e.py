"""End to end: ``sefar demo``'s loading on tiny real artifacts, the page in Chromium and the ``/ask`` API.

Tiny artifacts, built in seconds through public functions: a random TimeSformer saved as an encoder export, a
random 2-layer LLaMA with its tokenizer (``bridge_fixtures.tiny_llama``) and a random Q-Former adapter written
as an adapter export that records that LLM. Answers are random text; the test checks that they travel from the
LLM through the bridge into the page, and that the encoder's views show the export's class names.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from bridge_fixtures import tiny_adapter_config, tiny_llama

from demo.app import DemoConfig
from demo.browser import launch_chromium, upload_clip
from demo.serve import Artifacts, load_backend, serve
from encoder.data.syngym import CLASSES

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extras")
expect = playwright_api.expect

pytestmark = pytest.mark.slow
EMBED_DIM = 16
TIMEOUT_MS = 60_000


def tiny_encoder_export(folder: Path) -> Path:
    """A random one-block TimeSformer over SynGym's 33 classes at 32 px, saved as an encoder export."""
    from encoder.export import PreprocessConfig, build_export_config, save_export
    from encoder.timesformer import create_model

    torch.manual_seed(0)
    model = create_model("tiny", num_classes=len(CLASSES), img_size=32, depth=1, embed_dim=EMBED_DIM, num_heads=2,
                         fusion_dim=16, drop_path_rate=0.0)
    pp = PreprocessConfig(num_frames=8, img_size=32, mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225))
    return save_export(folder, model, build_export_config(model.cfg, pp, [c.name for c in CLASSES]))


def tiny_adapter_export(folder: Path, llm: Path) -> Path:
    """A random Q-Former adapter from ``EMBED_DIM`` features to the tiny LLaMA, recording that LLM."""
    from bridge.adapter import QFormerAdapter
    from bridge.export import write_adapter_export
    from bridge.llm import LLMConfig

    torch.manual_seed(0)
    adapter = QFormerAdapter(tiny_adapter_config(feature_dim=EMBED_DIM, llm_width=64))
    llm_config = LLMConfig(path=str(llm), template="vicuna_v1.1").to_dict()
    return write_adapter_export(folder, adapter, llm=llm_config, template="vicuna_v1.1",
                                features={"kind": "sefar", "use_cls": True}, prompt={})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Artifacts:
    root = tmp_path_factory.mktemp("demo_e2e")
    llm = tiny_llama(root / "llm")
    return Artifacts(tiny_encoder_export(root / "encoder"), tiny_adapter_export(root / "adapter", llm), str(llm))


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    examples = tmp_path_factory.mktemp("examples")
    config = DemoConfig(port=free_port(), max_new_tokens=12)
    app, url, _ = serve(load_backend(tiny), config, examples, block=False)
    yield url, sorted(examples.glob("*.mp4"))
    app.close()


def test_the_page_answers_from_the_llm_and_shows_the_encoder_views(server):
    url, examples = server
    names = {c.name for c in CLASSES}
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page()
            page.goto(url)
            upload_clip(page, examples[0])
            expect(page.locator("#status")).to_contain_text("8 frames sampled", timeout=TIMEOUT_MS)
            shown = page.locator("#top5").inner_text()
            assert sum(name in shown for name in names) >= 5  # five of the export's class names, with bars
            expect(page.locator("#certainty")).to_contain_text("η")
            page.locator("#question textarea").fill("what move is this?")
            page.locator("#send").click()
            bot = page.locator("#chat .bot")
            expect(bot.first).to_be_visible(timeout=TIMEOUT_MS)
            expect(bot.first).not_to_have_text("", timeout=TIMEOUT_MS)
            page.get_by_role("tab", name="Multiple choice").click()
            page.locator("#mc-question textarea").fill("what move is this?")
            page.locator("#mc-options textarea").fill("salto forward tucked\nsalto backward tucked\ngiant circle")
            page.locator("#mc-choose").click()
            expect(page.locator("#mc-result")).to_contain_text("Answer:", timeout=TIMEOUT_MS)
            expect(page.locator("#mc-result")).to_contain_text("log-likelihood")
        finally:
            browser.close()


def test_the_ask_api_returns_the_llm_answer(server):
    from gradio_client import Client, handle_file

    url, examples = server
    answer = Client(url, verbose=False).predict(handle_file(str(examples[1])), "what move?", api_name="/ask")
    assert isinstance(answer, str) and answer.strip()


def test_the_cli_defaults_are_the_bridge_defaults():
    from bridge.chat import DEFAULT_ADAPTER_EXPORT, DEFAULT_ENCODER_EXPORT
    from sefar import demo_cmd

    assert Path(demo_cmd.DEFAULT_ENCODER_EXPORT) == Path(DEFAULT_ENCODER_EXPORT)
    assert Path(demo_cmd.DEFAULT_ADAPTER_EXPORT) == Path(DEFAULT_ADAPTER_EXPORT)


def test_the_encoder_only_page_shows_the_views_and_refuses_chat(tmp_path):
    from demo.app import DemoHandlers, Session
    from demo.examples import ensure_examples

    backend = load_backend(Artifacts(tiny_encoder_export(tmp_path / "encoder"), None))
    handlers = DemoHandlers(backend, DemoConfig(chat=False))
    clip = ensure_examples(tmp_path / "examples")[0][1]
    session, image, top5, certainty, _, status = handlers.on_clip(str(clip), Session())
    assert status.endswith("8 frames sampled (encoder only: start the demo with an adapter export to chat)")
    assert len(top5) == 5 and set(top5) <= {c.name for c in CLASSES} and 0 < sum(top5.values()) <= 1
    assert image.ndim == 3 and "η" in certainty
    assert "encoder only" in list(handlers.on_ask("what?", session))[-1][3]


def test_an_untrained_adapter_of_the_default_shape_serves_the_llm(tiny, tmp_path):
    from bridge.export import read_adapter_config
    from demo.examples import ensure_examples
    from demo.serve import untrained_adapter_export

    folder = untrained_adapter_export(tmp_path / "adapter", tiny.encoder, tiny.llm)
    config = read_adapter_config(folder)
    assert config["source"] == {"untrained": True}
    assert (config["adapter"]["feature_dim"], config["adapter"]["llm_width"]) == (EMBED_DIM, 64)
    assert config["adapter"]["num_queries"] == 32 and config["llm"]["path"] == tiny.llm
    chat = load_backend(Artifacts(tiny.encoder, folder))  # the LLM recorded in the export
    clip = chat.encode(ensure_examples(tmp_path / "examples")[0][1])
    assert "".join(chat.stream(clip, [], "what?", max_new_tokens=4))


def test_the_real_backend_counts_tokens_and_the_demo_survives_hostile_questions(tiny, tmp_path):
    from demo.app import DemoHandlers, Session
    from demo.examples import ensure_examples

    chat = load_backend(tiny)
    assert 0 < chat.count_tokens("what move?") <= chat.count_tokens("what move is this athlete performing?")
    handlers = DemoHandlers(chat, DemoConfig(max_question_tokens=64, max_new_tokens=4))
    session = handlers.on_clip(str(ensure_examples(tmp_path / "examples")[0][1]), Session())[0]
    messages, _, _, status = list(handlers.on_ask("what is <video> here?", session))[-1]
    assert status == "" and messages[-1]["role"] == "assistant"  # the template places the video, not user text
    assert messages[-2]["content"] == "what is <video> here?"
    status = list(handlers.on_ask("salto " * 100, session))[-1][3]
    assert status.startswith("**error:** the question is too long:")
    assert status.endswith("over the limit of 64; shorten it")
    result = handlers.on_choose("which?", "salto\n" + "twist " * 100, session)
    assert result.startswith("**error:** option 2 is too long")
    messages, _, _, status = list(handlers.on_ask("what move?", session))[-1]
    assert status == "" and messages[-1]["role"] == "assistant"
