"""Loading the exports the demo runs on and serving the page (what ``sefar demo`` calls).

The demo loads three artifacts and never trains: the SeFAR encoder export, the bridge's adapter export and the
LLM (the adapter export's recorded LLM, a local folder or GGUF file, or the embedded SmolLM2). Defaults are
where ``make quickstart`` writes them; a missing one stops with one line that says how to make it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.errors import DataError

__all__ = ["Artifacts", "check_artifacts", "load_backend", "serve"]

QUICKSTART_HINT = "make it with `make quickstart`"


@dataclass(frozen=True)
class Artifacts:
    """What to load: ``adapter=None`` is the encoder-only page (views, no chat)."""

    encoder: Path
    adapter: Path | None
    llm: str | None = None  # None: the adapter export's recorded LLM
    device: str = "cpu"
    quantization: str | None = None  # None | "8bit" | "4bit"


def check_artifacts(artifacts: Artifacts) -> None:
    """Raise one :class:`DataError` naming the first missing export and how to make it."""
    if not (artifacts.encoder / "config.json").is_file():
        raise DataError(artifacts.encoder, f"no encoder export here; {QUICKSTART_HINT} or pass --encoder EXPORT")
    if artifacts.adapter is not None and not (artifacts.adapter / "config.json").is_file():
        raise DataError(artifacts.adapter, f"no adapter export here; {QUICKSTART_HINT}, pass --bridge ADAPTER, "
                                           "or --encoder-only for the page without chat")


def load_backend(artifacts: Artifacts):
    """The bridge's ``VideoChat`` on the artifacts (checked first)."""
    from bridge.chat import VideoChat

    check_artifacts(artifacts)
    return VideoChat.load(artifacts.encoder, artifacts.adapter, artifacts.llm, device=artifacts.device,
                          quantization=artifacts.quantization)


def serve(backend, config, examples_dir: str | os.PathLike | None = None, with_examples: bool = True,
          block: bool = True):
    """Build and launch the page on ``backend``; returns Gradio's ``(app, local_url, share_url)``."""
    from demo.app import build_app, launch
    from demo.examples import default_cache_dir, ensure_examples

    examples = ensure_examples(examples_dir) if with_examples else []
    folder = Path(examples_dir) if examples_dir is not None else default_cache_dir()
    app = build_app(backend, config, examples)
    _, url, share = launch(app, config, allowed_paths=[folder] if with_examples else [], block=block)
    return app, url, share
