"""The demo page in a real headless Chromium (Playwright), and its API through ``gradio_client``.

The page runs on the scripted backend of ``demo_backend.py`` (real clip reading and layout, scripted answers
streamed word by word), so these tests check the page: upload, the views, streaming, error messages and
per-session state. ``test_demo_e2e.py`` runs the same page on the real bridge.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
from demo_backend import ScriptedChat
from videos import write_video

from demo.app import DemoConfig, build_app, launch
from demo.browser import launch_chromium, upload_clip
from demo.examples import ensure_examples
from demo.upload import UploadLimits

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extras")
expect = playwright_api.expect

WORD_DELAY = 0.25  # seconds between streamed words: slow enough to see a partial answer
TIMEOUT_MS = 30_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return ensure_examples(tmp_path_factory.mktemp("examples"))


@pytest.fixture(scope="module")
def server(examples):
    """The page on a loopback port: ``(url, backend)``."""
    chat = ScriptedChat(delay=WORD_DELAY)
    config = DemoConfig(port=free_port(), concurrency=2, limits=UploadLimits(max_mb=5, max_seconds=30))
    app = build_app(chat, config, examples)
    _, url, _ = launch(app, config, allowed_paths=[examples[0][1].parent], block=False)
    yield url, chat
    app.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = launch_chromium(p)
        yield browser
        browser.close()


def open_page(browser, url):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.goto(url)
    expect(page.locator("#clip-upload")).to_be_visible(timeout=TIMEOUT_MS)
    return context, page


def ask(page, question: str) -> None:
    page.locator("#question textarea").fill(question)
    page.locator("#send").click()


def test_upload_ask_and_see_a_streamed_answer_and_the_top5_chart(server, browser, examples):
    url, _ = server
    context, page = open_page(browser, url)
    try:
        upload_clip(page, examples[0][1])
        expect(page.locator("#status")).to_contain_text("8 frames sampled", timeout=TIMEOUT_MS)
        top5 = page.locator("#top5")
        expect(top5).to_contain_text("salto forward tucked", timeout=TIMEOUT_MS)
        expect(top5).to_contain_text("41%")
        expect(top5).to_contain_text("salto forward stretched")  # all five bars
        expect(page.locator("#layout img")).to_be_visible()
        expect(page.locator("#certainty")).to_contain_text("η")
        ask(page, "which salto is performed in this clip and how")
        name = examples[0][1].name
        # Streamed: the start of the answer shows while its end is still being generated.
        whole = f"{name} / turn 1: which salto is performed in this clip and how"
        page.wait_for_function(
            """([start, whole]) => { const t = document.querySelector('#chat').innerText;
                                     return t.includes(start) && !t.includes(whole); }""",
            arg=[f"{name} / turn 1: which", whole], timeout=TIMEOUT_MS, polling=50,
        )
        expect(page.locator("#chat")).to_contain_text(whole, timeout=TIMEOUT_MS)
    finally:
        context.close()


def test_a_corrupt_upload_shows_the_error_in_the_page(server, browser, tmp_path):
    url, _ = server
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    context, page = open_page(browser, url)
    try:
        upload_clip(page, broken)
        status = page.locator("#status")
        expect(status).to_contain_text("error: broken.mp4: cannot be read as a video", timeout=TIMEOUT_MS)
        expect(status).not_to_contain_text("Traceback")
        ask(page, "what is it?")
        expect(status).to_contain_text("upload a clip or pick an example first", timeout=TIMEOUT_MS)
    finally:
        context.close()


def test_an_upload_over_the_size_limit_is_refused_with_a_message(server, browser, tmp_path):
    url, _ = server
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(6 * 2**20))  # the server takes at most 5 MB
    context, page = open_page(browser, url)
    try:
        upload_clip(page, big)
        expect(page.locator("body")).to_contain_text("exceed the maximum allowed size", timeout=TIMEOUT_MS)
        expect(page.locator("body")).to_contain_text("big.mp4")
    finally:
        context.close()


def test_a_clip_over_the_duration_limit_shows_the_limit(server, browser, tmp_path):
    url, _ = server
    long_clip = write_video(tmp_path / "long.mp4", n=320, size=(32, 32), fps=10)  # 32 s > 30 s
    context, page = open_page(browser, url)
    try:
        upload_clip(page, long_clip)
        expect(page.locator("#status")).to_contain_text("long.mp4: 32.0 s is longer than the 30 s clip limit",
                                                        timeout=TIMEOUT_MS)
    finally:
        context.close()


def test_two_browser_contexts_keep_separate_chats(server, browser, examples):
    url, chat = server
    (context_a, page_a), (context_b, page_b) = open_page(browser, url), open_page(browser, url)
    name_a, name_b = examples[0][1].name, examples[1][1].name
    try:
        upload_clip(page_a, examples[0][1])
        upload_clip(page_b, examples[1][1])
        for page in (page_a, page_b):
            expect(page.locator("#status")).to_contain_text("8 frames sampled", timeout=TIMEOUT_MS)
        ask(page_a, "first from A")
        ask(page_b, "first from B")  # both answers stream at once (concurrency 2)
        expect(page_a.locator("#chat")).to_contain_text(f"{name_a} / turn 1: first from A", timeout=TIMEOUT_MS)
        expect(page_b.locator("#chat")).to_contain_text(f"{name_b} / turn 1: first from B", timeout=TIMEOUT_MS)
        ask(page_a, "second from A")
        expect(page_a.locator("#chat")).to_contain_text(f"{name_a} / turn 2: second from A", timeout=TIMEOUT_MS)
        for page, other in ((page_a, "from B"), (page_b, "from A")):
            expect(page.locator("#chat")).not_to_contain_text(other)
        second = [call for call in chat.calls if call[2] == "second from A"]
        assert len(second) == 1 and second[0][0] == name_a
        assert [m["content"].strip() for m in second[0][1]] == ["first from A", f"{name_a} / turn 1: first from A"]
    finally:
        context_a.close()
        context_b.close()


def test_the_ask_api_answers_gradio_client(server, examples, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, _ = server
    client = Client(url, verbose=False)
    assert list(client.view_api(return_format="dict")["named_endpoints"]) == ["/ask"]  # page events are private
    answer = client.predict(handle_file(str(examples[2][1])), "what turn?", api_name="/ask")
    assert answer == f"{examples[2][1].name} / turn 1: what turn? "
    text = tmp_path / "notes.txt"
    text.write_text("not a clip")
    with pytest.raises(AppError, match="unsupported file type"):
        client.predict(handle_file(str(text)), "what?", api_name="/ask")


def test_the_load_bench_counts_answers_and_errors(server, examples):
    from pathlib import Path

    from bench import demo_load as bench
    url, _ = server
    clips = [examples[0][1], examples[1][1], Path(__file__)]  # each client meets the non-video once
    result = bench.run_load(url, clips, clients=2, requests=3, question="ok?")
    summary = result.summary()
    assert (summary["answered"], summary["errors"], summary["not_run"]) == (4, 2, 0)
    assert len(summary["error_samples"]) == 1 and "unsupported file type" in summary["error_samples"][0]
    assert 0 < summary["p50_s"] <= summary["p95_s"] <= summary["max_s"]
    with pytest.raises(SystemExit, match="loopback"):
        bench.run_load("http://192.0.2.1:7860/", clips, 1, 1)
    with pytest.raises(SystemExit, match="--clients must be"):
        bench.run_load(url, clips, 33, 1)
    with bench.PeakRSS(os.getpid()) as rss:
        time.sleep(0.1)
    assert rss.peak > 10 * 2**20


# ----------------------------------------------------------------------------------- hostile requests


@pytest.fixture(scope="module")
def strict(examples):
    """The page with small text limits and a short time limit: ``(url, app)``."""
    config = DemoConfig(port=free_port(), max_question_tokens=8, max_options=3, request_timeout_s=3)
    app = build_app(ScriptedChat(delay=0.05), config, examples)
    _, url, _ = launch(app, config, allowed_paths=[examples[0][1].parent], block=False)
    yield url, app
    app.close()


def test_a_too_long_question_is_refused_in_the_page_and_the_next_is_answered(strict, browser, examples):
    url, _ = strict
    context, page = open_page(browser, url)
    try:
        upload_clip(page, examples[0][1])
        expect(page.locator("#status")).to_contain_text("8 frames sampled", timeout=TIMEOUT_MS)
        ask(page, "word " * 20)
        expect(page.locator("body")).to_contain_text("the question is too long: 20 tokens, over the limit of 8",
                                                     timeout=TIMEOUT_MS)
        ask(page, "what is <video> here?")
        expect(page.locator("#status")).to_contain_text("the model failed to answer (see the server log)",
                                                        timeout=TIMEOUT_MS)
        expect(page.locator("body")).not_to_contain_text("Traceback")
        ask(page, "and now?")
        expect(page.locator("#chat")).to_contain_text(f"{examples[0][1].name} / turn 1: and now?",
                                                      timeout=TIMEOUT_MS)
        page.get_by_role("tab", name="Multiple choice").click()
        page.locator("#mc-question textarea").fill("which?")
        page.locator("#mc-options textarea").fill("a\nb\nc\nd")
        page.locator("#mc-choose").click()
        expect(page.locator("body")).to_contain_text("too many options: 4, at most 3", timeout=TIMEOUT_MS)
        page.locator("#mc-options textarea").fill("salto\ngiant circle")
        page.locator("#mc-choose").click()
        expect(page.locator("#mc-result")).to_contain_text("Answer: salto", timeout=TIMEOUT_MS)
    finally:
        context.close()


def test_a_replaced_upload_is_removed_from_the_server(strict, browser, tmp_path):
    url, app = strict
    first = write_video(tmp_path / "first.mp4", n=20, size=(32, 32), fps=10)
    second = write_video(tmp_path / "second.mp4", n=25, size=(32, 32), fps=10)
    context, page = open_page(browser, url)
    try:
        upload_clip(page, first)
        expect(page.locator("#status")).to_contain_text("first.mp4", timeout=TIMEOUT_MS)
        received = [p for p in app.upload_file_set if p.endswith("first.mp4")]
        assert len(received) == 1 and os.path.exists(received[0])
        page.locator("#clip-upload").get_by_role("button", name="Clear").click()  # the page's way to replace it
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while os.path.exists(received[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        upload_clip(page, second)
        expect(page.locator("#status")).to_contain_text("second.mp4", timeout=TIMEOUT_MS)
        assert not os.path.exists(received[0])
        assert any(p.endswith("second.mp4") and os.path.exists(p) for p in app.upload_file_set)
    finally:
        context.close()


def test_the_ask_api_refuses_hostile_questions_clearly_and_answers_the_next(strict, examples):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError, ValidationError

    url, app = strict
    client = Client(url, verbose=False)
    clip = handle_file(str(examples[1][1]))
    with pytest.raises(ValidationError, match="the question is too long: 200,000 characters"):
        client.predict(clip, "x" * 200_000, api_name="/ask")
    with pytest.raises(AppError, match=r"error: the model failed to answer \(see the server log\)"):
        client.predict(clip, "<video>", api_name="/ask")
    assert client.predict(clip, "ok?", api_name="/ask") == f"{examples[1][1].name} / turn 1: ok? "
    assert not any(p.endswith(examples[1][1].name) and os.path.exists(p) for p in app.upload_file_set)


def test_the_server_removes_what_it_received_when_it_shuts_down(tmp_path):
    config = DemoConfig(port=free_port())
    app = build_app(ScriptedChat(), config)
    launch(app, config, block=False)
    folder = tmp_path / "received"
    folder.mkdir()
    received, other = folder / "clip.mp4", folder / "not_received.mp4"
    received.write_bytes(b"clip")
    other.write_bytes(b"other")
    app.upload_file_set.add(str(received))  # as Gradio records an upload
    app.close()
    deadline = time.monotonic() + 10
    while received.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not received.exists() and other.exists()
