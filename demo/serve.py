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

__all__ = ["Artifacts", "check_artifacts", "load_backend", "serve", "untrained_adapter_export"]

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


def untrained_adapter_export(
    folder: str | os.PathLike, encoder_export: str | os.PathLike, llm: str | None = None
) -> Path:
    """An adapter export of the bridge's default shape (embedded MiniLM Q-Former, 32 queries) with untrained
    projection weights, for ``encoder_export`` and ``llm`` (None: the embedded SmolLM2).

    For timing and screenshots before an adapter has been trained: per request it costs exactly what a trained
    adapter of that shape costs, but its query tokens mean nothing to the LLM, so answers are not about the clip.
    Nothing here is trained.
    """
    import torch

    from bridge.adapter import AdapterConfig, QFormerAdapter
    from bridge.export import write_adapter_export
    from bridge.llm import EMBEDDED, LLMConfig, load_llm
    from encoder.export import read_export_config

    feature_dim = int(read_export_config(encoder_export)["architecture"]["embed_dim"])
    llm_config = LLMConfig(path=llm or EMBEDDED)
    width = load_llm(llm_config).width
    torch.manual_seed(0)
    adapter = QFormerAdapter(AdapterConfig(feature_dim=feature_dim, llm_width=width))
    return write_adapter_export(folder, adapter, llm=llm_config.to_dict(), template=llm_config.template,
                                features={"kind": "sefar", "use_cls": True}, prompt={}, source={"untrained": True})
