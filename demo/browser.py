"""Driving the page in a real headless Chromium (the browser tests and the README screenshot).

Playwright for Python drives the system's Chromium (Debian's ``chromium`` package at ``/usr/bin/chromium``);
no browser is ever downloaded. Flags keep it offline and quiet; ``--no-sandbox`` lets it run as root (CI
containers). Each :func:`launch_chromium` call starts a browser with a fresh, temporary profile (Playwright
creates and deletes the user-data dir), and each ``browser.new_context()`` is a separate cookie jar, i.e. a
separate Gradio session.
"""

from __future__ import annotations

import os
from pathlib import Path

from common.errors import ConfigError

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "chromium_path", "launch_chromium", "upload_clip"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_path() -> Path:
    """The Chromium binary: ``$SEFAR_CHROMIUM`` or ``/usr/bin/chromium``; raises when it is not there."""
    path = Path(os.environ.get("SEFAR_CHROMIUM", CHROMIUM))
    if not path.is_file():
        raise ConfigError(f"{path}: no Chromium binary; install it with `apt-get install -y chromium` "
                          "(or set SEFAR_CHROMIUM to one)")
    return path


def launch_chromium(playwright):
    """A headless Chromium ``Browser`` started by ``playwright`` (a ``sync_playwright()`` object)."""
    return playwright.chromium.launch(executable_path=str(chromium_path()), headless=True, args=list(CHROMIUM_ARGS))


def upload_clip(page, path: str | os.PathLike) -> None:
    """Put ``path`` into the page's clip upload (the hidden file input of ``#clip-upload``)."""
    page.locator("#clip-upload input[type=file]").set_input_files(str(path))
