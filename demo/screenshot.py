"""Screenshot of the demo page for the README: ``python -m demo.screenshot --out docs/demo.png``.

Serves the page on a free loopback port (same loading as ``sefar demo``), opens it in headless Chromium
(:mod:`demo.browser`), picks a bundled example clip, asks one question, waits for the streamed answer to finish
and saves a full-page PNG (written to a temporary file, then renamed).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from bridge.chat import DEFAULT_ADAPTER_EXPORT, DEFAULT_ENCODER_EXPORT

QUESTION = "Which element does the gymnast perform?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_stable(page, selector: str, seconds: float = 2.0, timeout: float = 300.0) -> str:
    """The text of ``selector`` once it has not changed for ``seconds`` (a finished stream)."""
    last, since, start = None, time.monotonic(), time.monotonic()
    while time.monotonic() - start < timeout:
        text = page.inner_text(selector)
        if text != last:
            last, since = text, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return text
        time.sleep(0.2)
    raise TimeoutError(f"{selector} still changing after {timeout:.0f} s")


def take_screenshot(url: str, clip: Path, question: str, out: Path, width: int = 1280) -> Path:
    """Drive the page at ``url``: upload ``clip``, ask ``question``, save a full-page PNG at ``out``."""
    from playwright.sync_api import expect, sync_playwright

    from demo.browser import launch_chromium, upload_clip

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.png")
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(url)
            upload_clip(page, clip)
            expect(page.locator("#top5")).to_contain_text("%", timeout=120_000)
            page.locator("#question textarea").fill(question)
            page.locator("#send").click()
            expect(page.locator("#chat")).to_contain_text(question, timeout=120_000)
            wait_until_stable(page, "#chat")
            page.screenshot(path=str(tmp), full_page=True)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
            browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.screenshot", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/demo.png", help="PNG to write")
    parser.add_argument("--encoder", default=DEFAULT_ENCODER_EXPORT, help="SeFAR encoder export folder")
    parser.add_argument("--bridge", default=DEFAULT_ADAPTER_EXPORT, help="adapter export folder")
    parser.add_argument("--llm", default=None, help="LLM folder or GGUF file (default: the adapter's)")
    parser.add_argument("--untrained-adapter", action="store_true",
                        help="instead of --bridge: an untrained adapter of the default shape "
                             "(answers not about the clip)")
    parser.add_argument("--example", type=int, default=0, help="which bundled example clip (0-3)")
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)

    from common.errors import ConfigError, DataError
    from demo.app import DemoConfig
    from demo.examples import ensure_examples
    from demo.serve import Artifacts, load_backend, serve, untrained_adapter_export

    try:
        with tempfile.TemporaryDirectory(prefix="demo_screenshot_") as tmp:
            adapter = Path(args.bridge)
            if args.untrained_adapter:
                adapter = untrained_adapter_export(Path(tmp) / "adapter", args.encoder, args.llm)
            artifacts = Artifacts(Path(args.encoder), adapter, args.llm)
            config = DemoConfig(port=_free_port(), max_new_tokens=args.max_new_tokens)
            app, url, _ = serve(load_backend(artifacts), config, block=False)
            try:
                clip = ensure_examples()[args.example][1]
                print(take_screenshot(url, clip, args.question, Path(args.out)))
            finally:
                app.close()
    except (DataError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
