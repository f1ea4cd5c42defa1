"""The Gradio app: drop in a gymnastics clip, see what the SeFAR encoder sees, ask the LLM about it.

The page shows, for one clip: the sampled frames laid out as the dual-level temporal elements, the encoder's
top-5 classes as a chart, how sure the encoder is (the teacher's dropout passes summarised as in Adaptive
Regulation), a chat whose answers stream token by token from the LLM through the adapter, and a
multiple-choice mode that ranks options by likelihood.

Everything model-side goes through a :class:`ChatBackend` (``bridge.chat.VideoChat`` in real use): the demo
only loads exports, it never trains. Safe defaults: loopback only, no share link, upload size and clip length
limits, bad uploads reported in the page (no traceback), per-browser-session state, one queue with a
concurrency limit shared by every model call, and one public API endpoint ``/ask`` ``(video, question) ->
answer`` for ``gradio_client``; the page's own events are private.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls at run time

import gradio as gr  # noqa: E402

from common.errors import ConfigError, DataError  # noqa: E402
from demo.upload import VIDEO_SUFFIXES, UploadLimits, check_upload, display_name  # noqa: E402
from demo.views import certainty_html, choices_markdown, layout_image, top5_values  # noqa: E402

if TYPE_CHECKING:
    from bridge.chat import ClipContext

__all__ = ["ChatBackend", "DemoConfig", "Session", "DemoHandlers", "build_app", "launch"]

_logger = logging.getLogger(__name__)

MODEL_CONCURRENCY_ID = "model"  # every event that runs a model shares one concurrency limit
# System fonts only: the default theme would fetch web fonts from the internet.
THEME = gr.themes.Default(
    primary_hue="orange",
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "monospace"],
)
CSS = "#status p { margin: 0.25em 0; } table.certainty td { padding: 2px 8px; }"


class ChatBackend(Protocol):
    """What the demo needs from ``bridge.chat.VideoChat``."""

    def encode(self, video: str | Path) -> "ClipContext": ...

    def stream(self, clip: "ClipContext", history: list[dict], question: str,
               max_new_tokens: int = 128) -> Iterator[str]: ...

    def choose(self, clip: "ClipContext", question: str, options: list[str]) -> tuple[int, list[float]]: ...


@dataclass(frozen=True)
class DemoConfig:
    """How the app is served. ``chat=False`` is the encoder-only page (no adapter: views but no chat)."""

    host: str = "127.0.0.1"
    port: int | None = None  # None: Gradio's first free port from 7860
    limits: UploadLimits = field(default_factory=UploadLimits)
    concurrency: int = 1  # model calls running at once, over all users
    queue_size: int = 32  # waiting requests beyond which new ones are refused
    max_new_tokens: int = 128
    max_sessions: int = 200  # sessions whose clip and chat are kept in memory; the oldest are dropped beyond
    session_ttl_s: float = 3600.0  # a session's clip and chat are dropped this long after their last change
    chat: bool = True

    def __post_init__(self) -> None:
        errors = []
        if self.port is not None and not 0 < self.port < 65536:
            errors.append(f"port={self.port}: use 1..65535 (or leave it unset for the first free port)")
        if self.concurrency < 1:
            errors.append(f"concurrency={self.concurrency}: at least 1 model call must be able to run")
        if self.queue_size < 1:
            errors.append(f"queue_size={self.queue_size}: the queue must hold at least 1 request")
        if self.max_new_tokens < 1:
            errors.append(f"max_new_tokens={self.max_new_tokens}: answers need at least 1 token")
        if self.max_sessions < 1 or not self.session_ttl_s > 0:
            errors.append(f"max_sessions={self.max_sessions}, session_ttl_s={self.session_ttl_s}: both must be > 0")
        if errors:
            raise ConfigError("; ".join(errors))


@dataclass
class Session:
    """One browser session's clip and chat (held in ``gr.State``, so never shared between sessions)."""

    clip: Any = None  # ClipContext of the current clip, None before the first upload
    name: str = ""  # the clip's file name
    history: list[dict] = field(default_factory=list)  # [{"role": "user"|"assistant", "content": str}]


_MARKDOWN_SPECIALS = str.maketrans({c: "\\" + c for c in "\\`*_[]<>#|~"})


def _plain(text: str) -> str:
    """``text`` escaped for Markdown, so that file names and messages show as they are."""
    return text.translate(_MARKDOWN_SPECIALS)


def _error(message: str) -> str:
    return f"**error:** {_plain(message)}"


# Outputs of a clip change: session, frames image, top-5, certainty, chat, status.
_ClipOutputs = tuple[Session, Any, Any, str, list, str]


class DemoHandlers:
    """The page's event handlers; plain methods, so they are tested without a browser."""

    def __init__(self, chat: ChatBackend, config: DemoConfig) -> None:
        self.chat, self.config = chat, config

    # -------------------------------------------------------------------------------------------- clip

    def _encode(self, path: str | os.PathLike) -> "ClipContext":
        """Check the upload and encode it; user-facing problems raise :class:`DataError` naming the file."""
        check_upload(path, self.config.limits)
        try:
            return self.chat.encode(path)
        except DataError as err:
            _logger.info("cannot encode %s: %s", display_name(path), err)
            raise DataError(display_name(path), "cannot be read as a video") from None

    def on_clip(self, path: str | None, session: Session) -> _ClipOutputs:
        """A clip was uploaded, picked from the examples or cleared: encode it and reset the chat."""
        if not path:
            return Session(), None, None, "", [], ""
        try:
            clip = self._encode(path)
        except DataError as err:
            return Session(), None, None, "", [], _error(str(err))
        except Exception:  # a bug, not bad input: keep the traceback in the server log only
            _logger.exception("encoding %s failed", display_name(path))
            return Session(), None, None, "", [], _error(f"{display_name(path)}: internal error (see the server log)")
        session = Session(clip=clip, name=display_name(path))
        passes = clip.certainty.get("passes")
        status = f"**{_plain(session.name)}**: {len(clip.frames)} frames sampled"
        if not self.config.chat:
            status += " (encoder only: start the demo with an adapter export to chat)"
        return (session, layout_image(clip.frames, clip.layout), top5_values(clip.top5),
                certainty_html(clip.certainty, None if passes is None else int(passes)), [], status)

    # -------------------------------------------------------------------------------------------- chat

    def on_ask(self, question: str, session: Session) -> Iterator[tuple[list, Session, str, str]]:
        """Stream the answer to ``question``; yields (chat messages, session, question box, status)."""
        question = (question or "").strip()
        if not question:
            yield session.history, session, "", ""
            return
        if not self.config.chat:
            yield session.history, session, question, _error("chat is off: this demo runs the encoder only")
            return
        if session.clip is None:
            yield session.history, session, question, _error("upload a clip or pick an example first")
            return
        past = list(session.history)
        asked = past + [{"role": "user", "content": question}]
        answer = ""
        yield asked + [{"role": "assistant", "content": answer}], session, "", ""
        try:
            for piece in self.chat.stream(session.clip, past, question, max_new_tokens=self.config.max_new_tokens):
                answer += piece  # Gradio shows each yield in place of the last: yield the whole text so far
                yield asked + [{"role": "assistant", "content": answer}], session, "", ""
        except Exception:
            _logger.exception("answering on %s failed", session.name)
            yield past, session, question, _error("the model failed to answer (see the server log)")
            return
        session.history = asked + [{"role": "assistant", "content": answer}]
        yield session.history, session, "", ""

    def on_clear_chat(self, session: Session) -> tuple[list, Session]:
        session.history = []
        return [], session

    # ---------------------------------------------------------------------------------- multiple choice

    def on_choose(self, question: str, options_text: str, session: Session) -> str:
        """Rank the options (one per line) by the LLM's likelihood; returns the result as Markdown."""
        question = (question or "").strip()
        options = [line.strip() for line in (options_text or "").splitlines() if line.strip()]
        if not self.config.chat:
            return _error("multiple choice needs the LLM: this demo runs the encoder only")
        if session.clip is None:
            return _error("upload a clip or pick an example first")
        if not question or len(options) < 2:
            return _error("write a question and at least two options, one per line")
        try:
            chosen, scores = self.chat.choose(session.clip, question, options)
        except Exception:
            _logger.exception("ranking options on %s failed", session.name)
            return _error("the model failed to rank the options (see the server log)")
        return choices_markdown(options, scores, chosen)

    # -------------------------------------------------------------------------------------------- API

    def api_ask(self, video: str | None, question: str) -> str:
        """``/ask``: one question about one clip, the whole answer at once (no history)."""
        if not self.config.chat:
            raise gr.Error("chat is off: this demo runs the encoder only")
        if not video:
            raise gr.Error("no video given")
        if not (question or "").strip():
            raise gr.Error("no question given")
        try:
            clip = self._encode(video)
        except DataError as err:
            raise gr.Error(f"error: {err}") from None
        return "".join(self.chat.stream(clip, [], question.strip(), max_new_tokens=self.config.max_new_tokens))


def _clip_panel(config: DemoConfig, examples: Sequence[tuple[str, str | Path]]) -> tuple:
    """Upload, examples, status line, top-5 chart, frames image and certainty table."""
    with gr.Row():
        with gr.Column(scale=2):
            kinds = ", ".join(s.lstrip(".") for s in VIDEO_SUFFIXES)
            limits = config.limits
            upload = gr.File(label=f"Clip ({kinds}; at most {limits.max_mb:g} MB and {limits.max_seconds:g} s)",
                             file_types=list(VIDEO_SUFFIXES), type="filepath", elem_id="clip-upload")
            if examples:
                gr.Examples([[str(path)] for _, path in examples], inputs=[upload], label="SynGym examples",
                            example_labels=[label for label, _ in examples])
            status = gr.Markdown(elem_id="status")
            top5 = gr.Label(num_top_classes=5, label="Encoder top-5", elem_id="top5", show_heading=False)
        with gr.Column(scale=3):
            frames = gr.Image(label="Sampled frames as dual-level elements", interactive=False, elem_id="layout",
                              buttons=["download", "fullscreen"])
            certainty = gr.HTML(label="How sure the encoder is", elem_id="certainty")
    return upload, status, top5, frames, certainty


def _chat_tab(config: DemoConfig) -> tuple:
    """The chat, the question box and its buttons (inactive on the encoder-only page)."""
    with gr.Tab("Chat"):
        chatbot = gr.Chatbot(label="Chat", elem_id="chat", height=320, feedback_options=None,
                             buttons=["copy", "copy_all"])
        with gr.Row():
            hint = ("Ask about the clip, e.g. What element is performed?" if config.chat
                    else "Chat is off: the demo was started without an adapter export.")
            question = gr.Textbox(show_label=False, scale=5, elem_id="question", interactive=config.chat,
                                  placeholder=hint)
            send = gr.Button("Send", variant="primary", scale=1, elem_id="send", interactive=config.chat)
            clear = gr.Button("Clear chat", scale=1, elem_id="clear-chat")
    return chatbot, question, send, clear


def _choice_tab(config: DemoConfig) -> tuple:
    """Question, options (one per line), the button and the ranked result."""
    with gr.Tab("Multiple choice"):
        question = gr.Textbox(label="Question", elem_id="mc-question",
                              placeholder="Which element does the gymnast perform?")
        options = gr.Textbox(label="Options, one per line", lines=4, elem_id="mc-options",
                             placeholder="salto forward tucked\nsalto backward tucked\n"
                                         "giant circle forward to handstand")
        choose = gr.Button("Choose", variant="primary", elem_id="mc-choose", interactive=config.chat)
        result = gr.Markdown(elem_id="mc-result")
    return question, options, choose, result


def build_app(chat: ChatBackend, config: DemoConfig, examples: Sequence[tuple[str, str | Path]] = ()) -> gr.Blocks:
    """The page (not yet queued or launched; :func:`launch` does both). ``examples``: (label, clip path) pairs."""
    handlers = DemoHandlers(chat, config)
    model_event = {"concurrency_limit": config.concurrency, "concurrency_id": MODEL_CONCURRENCY_ID}
    private = {"api_visibility": "private"}  # the page's own events: not part of the API
    with gr.Blocks(title="SeFAR: ask about a gymnastics clip") as app:
        session = gr.State(Session(), time_to_live=config.session_ttl_s)
        gr.Markdown("## SeFAR: ask about a gymnastics clip\n"
                    "Upload a clip or pick an example; the encoder's view of it appears on the right, then ask away.")
        upload, status, top5, frames, certainty = _clip_panel(config, examples)
        chatbot, question, send, clear = _chat_tab(config)
        mc_question, mc_options, choose, mc_result = _choice_tab(config)
        with gr.Row(visible=False):  # the public API's inputs and output, not shown
            api_video = gr.Video(label="video", sources=["upload"], include_audio=True)  # audio kept: no ffmpeg pass
            api_question, api_answer = gr.Textbox(label="question"), gr.Textbox(label="answer")
            api_button = gr.Button()

        upload.change(handlers.on_clip, [upload, session], [session, frames, top5, certainty, chatbot, status],
                      **private, **model_event)
        for trigger in (question.submit, send.click):
            trigger(handlers.on_ask, [question, session], [chatbot, session, question, status], **private,
                    **model_event)
        clear.click(handlers.on_clear_chat, [session], [chatbot, session], **private)
        choose.click(handlers.on_choose, [mc_question, mc_options, session], [mc_result], **private, **model_event)
        api_button.click(handlers.api_ask, [api_video, api_question], [api_answer], api_name="ask", **model_event)
    return app


def launch(app: gr.Blocks, config: DemoConfig, allowed_paths: Sequence[str | Path] = (), block: bool = True):
    """Queue and serve ``app`` on ``config.host:config.port``; returns Gradio's ``(app, local_url, share_url)``.

    ``allowed_paths``: folders Gradio may serve files from (the example clips' cache).
    ``block=False`` returns at once (tests, benchmarks); call ``app.close()`` when done.
    """
    app.queue(default_concurrency_limit=config.concurrency, max_size=config.queue_size)
    return app.launch(
        server_name=config.host,
        server_port=config.port,
        share=False,
        show_error=False,
        max_file_size=config.limits.max_bytes,
        state_session_capacity=config.max_sessions,
        allowed_paths=[str(p) for p in allowed_paths],
        prevent_thread_lock=not block,
        quiet=not block,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        theme=THEME,
        css=CSS,
    )
