"""The Gradio app: drop in a gymnastics clip, see what the SeFAR encoder sees, ask the LLM about it.

The page shows, for one clip: the sampled frames laid out as the dual-level temporal elements, the encoder's
top-5 classes as a chart, how sure the encoder is (the teacher's dropout passes summarised as in Adaptive
Regulation), a chat whose answers stream token by token from the LLM through the adapter, and a
multiple-choice mode that ranks options by likelihood.

Everything model-side goes through a :class:`ChatBackend` (``bridge.chat.VideoChat`` in real use): the demo
only loads exports, it never trains. Safe defaults: loopback only, no share link, upload size, clip length and
decoded size limits, question length limits in LLM tokens (checked before a request joins the queue, and again
in the handler), a time limit per request, bad input and backend failures reported in the page as one plain
message (no traceback), per-browser-session state, uploads removed when replaced, when their session expires and
at shutdown, one queue with a concurrency limit shared by every model call, and one public API endpoint ``/ask``
``(video, question) -> answer`` for ``gradio_client``; the page's own events are private.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls at run time

import gradio as gr  # noqa: E402

from common.errors import ConfigError, DataError  # noqa: E402
from demo.runner import ModelSlots, RequestTimeout  # noqa: E402
from demo.upload import VIDEO_SUFFIXES, UploadLimits, check_upload, display_name  # noqa: E402
from demo.views import certainty_html, choices_markdown, layout_image, top5_values  # noqa: E402

if TYPE_CHECKING:
    from bridge.chat import ClipContext

__all__ = ["ChatBackend", "DemoConfig", "Session", "DemoHandlers", "build_app", "launch"]

_logger = logging.getLogger(__name__)

MODEL_CONCURRENCY_ID = "model"  # every event that runs a model shares one concurrency limit
# A question longer than this many characters per allowed token is refused without tokenizing it: no tokenizer
# packs more characters than this into one token of ordinary text, and it never sees megabytes.
CHARS_PER_TOKEN = 16
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

    def count_tokens(self, text: str) -> int: ...

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
    max_question_tokens: int = 256  # a question, and each multiple-choice option, in the LLM's tokens
    max_options: int = 10  # multiple-choice options per question
    max_history_turns: int = 8  # earlier question-answer turns the LLM sees with a new question
    request_timeout_s: float = 120.0  # a request running longer is stopped and its model slot freed

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
        if self.max_question_tokens < 1:
            errors.append(f"max_question_tokens={self.max_question_tokens}: questions need at least 1 token")
        if self.max_options < 2:
            errors.append(f"max_options={self.max_options}: multiple choice needs at least 2 options")
        if self.max_history_turns < 0:
            errors.append(f"max_history_turns={self.max_history_turns}: use 0 or more")
        if not 0 < self.request_timeout_s < math.inf:
            errors.append(f"request_timeout_s={self.request_timeout_s}: set a positive number of seconds")
        if errors:
            raise ConfigError("; ".join(errors))


@dataclass
class Session:
    """One browser session's clip and chat (held in ``gr.State``, so never shared between sessions)."""

    clip: Any = None  # ClipContext of the current clip, None before the first upload
    name: str = ""  # the clip's file name
    history: list[dict] = field(default_factory=list)  # [{"role": "user"|"assistant", "content": str}]
    upload: str = ""  # the clip's file as the demo received it ("" for examples): removed when no longer needed


_MARKDOWN_SPECIALS = str.maketrans({c: "\\" + c for c in "\\`*_[]<>#|~"})


def _plain(text: str) -> str:
    """``text`` escaped for Markdown, so that file names and messages show as they are."""
    return text.translate(_MARKDOWN_SPECIALS)


def _error(message: str) -> str:
    return f"**error:** {_plain(message)}"


# Outputs of a clip change: session, frames image, top-5, certainty, chat, status.
_ClipOutputs = tuple[Session, Any, Any, str, list, str]


def _remove_upload(path: str) -> None:
    """Remove one received upload and its folder if that is then empty (Gradio keeps each in its own folder)."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        _logger.warning("cannot remove the upload %s: %s", display_name(path), err)
        return
    try:
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass  # not empty (another file of the same content) or already gone


class DemoHandlers:
    """The page's event handlers; plain methods, so they are tested without a browser.

    ``received(path)``: whether ``path`` is a file the demo itself received as an upload (:func:`build_app` asks
    Gradio); only such files are ever removed, once no session holds them.
    """

    def __init__(self, chat: ChatBackend, config: DemoConfig,
                 received: Callable[[str], bool] | None = None) -> None:
        self.chat, self.config = chat, config
        self.slots = ModelSlots(config.concurrency, config.request_timeout_s)
        self.received = received or (lambda path: False)
        self._holders: Counter[str] = Counter()  # received upload -> sessions and requests holding it
        self._holders_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ uploads

    def _hold(self, path: str | os.PathLike | None) -> str:
        """Count one more holder of ``path`` if the demo received it; returns the path held ("" if none)."""
        path = os.fspath(path) if path else ""
        if not path or not self.received(path):
            return ""
        with self._holders_lock:
            self._holders[path] += 1
        return path

    def _release(self, path: str) -> None:
        """One holder less of ``path``; the last one removes the file."""
        if not path:
            return
        with self._holders_lock:
            self._holders[path] -= 1
            if self._holders[path] > 0:
                return
            del self._holders[path]
        _remove_upload(path)

    def on_session_deleted(self, session: Any) -> None:
        """A session expired (``gr.State``'s delete callback): its upload goes with it."""
        if isinstance(session, Session):
            self._release(session.upload)
            session.upload = ""

    # ------------------------------------------------------------------------------------------ checks

    def _text_problem(self, text: str, what: str) -> str | None:
        """Why ``text`` (a question or an option) is refused, or None. Cheap: characters first, then tokens."""
        limit = self.config.max_question_tokens
        if len(text) > limit * CHARS_PER_TOKEN:
            return f"{what} is too long: {len(text):,} characters, over the limit of {limit} tokens; shorten it"
        try:
            tokens = self.chat.count_tokens(text)
        except Exception:
            _logger.exception("counting the tokens of a %s failed", what)
            return f"{what} could not be checked (see the server log)"
        if tokens > limit:
            return f"{what} is too long: {tokens:,} tokens, over the limit of {limit}; shorten it"
        return None

    def question_problem(self, question: str | None) -> str | None:
        """Why a chat or API question is refused, or None (an empty one, or any on the encoder-only page, whose
        handlers refuse it, is not refused here: there is no tokenizer)."""
        question = (question or "").strip()
        return self._text_problem(question, "the question") if question and self.config.chat else None

    def choice_problem(self, question: str | None, options_text: str | None) -> str | None:
        """Why a multiple-choice question or its options are refused, or None."""
        if not self.config.chat:
            return None
        limit = self.config.max_options
        longest = limit * (self.config.max_question_tokens * CHARS_PER_TOKEN + 1)
        if len(options_text or "") > longest:  # before splitting a huge text into a huge list
            return f"the options are too long: {len(options_text):,} characters for at most {limit} options"
        options = _options(options_text)
        if len(options) > limit:
            return f"too many options: {len(options)}, at most {limit}"
        problem = self.question_problem(question)
        for i, option in enumerate(options):
            problem = problem or self._text_problem(option, f"option {i + 1}")
        return problem

    # The validators run before a request joins the model queue: a refused request never waits for a slot.

    def validate_ask(self, question: str | None, session: Any = None) -> tuple:
        problem = self.question_problem(question)
        return gr.validate(problem is None, problem or ""), gr.validate(True, "")

    def validate_choose(self, question: str | None, options_text: str | None, session: Any = None) -> tuple:
        problem = self.choice_problem(question, options_text)
        return gr.validate(problem is None, problem or ""), gr.validate(True, ""), gr.validate(True, "")

    def validate_api(self, video: Any, question: str | None) -> tuple:
        problem = self.question_problem(question)
        return gr.validate(True, ""), gr.validate(problem is None, problem or "")

    # -------------------------------------------------------------------------------------------- clip

    def _encode(self, path: str | os.PathLike, deadline: float) -> "ClipContext":
        """Check the upload and encode it; user-facing problems raise :class:`DataError` naming the file."""
        check_upload(path, self.config.limits)
        try:
            return self.slots.call(self.chat.encode, path, deadline=deadline)
        except DataError as err:
            _logger.info("cannot encode %s: %s", display_name(path), err)
            raise DataError(display_name(path), "cannot be read as a video") from None

    def on_clip(self, path: str | None, session: Session) -> _ClipOutputs:
        """A clip was uploaded, picked from the examples or cleared: encode it and reset the chat."""
        previous = session.upload if isinstance(session, Session) else ""
        held = self._hold(path)  # before letting the previous one go: the same file uploaded again stays
        self._release(previous)
        if not path:
            return Session(), None, None, "", [], ""
        try:
            clip = self._encode(path, self.slots.deadline())
        except (DataError, RequestTimeout) as err:  # expected: one line in the log, the reason in the page
            _logger.warning("refused %s: %s", display_name(path), err)
            self._release(held)
            return Session(), None, None, "", [], _error(str(err))
        except Exception:  # a bug, not bad input: keep the traceback in the server log only
            _logger.exception("encoding %s failed", display_name(path))
            self._release(held)
            return Session(), None, None, "", [], _error(f"{display_name(path)}: internal error (see the server log)")
        session = Session(clip=clip, name=display_name(path), upload=held)
        passes = clip.certainty.get("passes")
        status = f"**{_plain(session.name)}**: {len(clip.frames)} frames sampled"
        if not self.config.chat:
            status += " (encoder only: start the demo with an adapter export to chat)"
        return (session, layout_image(clip.frames, clip.layout), top5_values(clip.top5),
                certainty_html(clip.certainty, None if passes is None else int(passes)), [], status)

    # -------------------------------------------------------------------------------------------- chat

    def _recent(self, history: list[dict]) -> list[dict]:
        """The last ``max_history_turns`` question-answer turns of ``history`` (what the LLM sees)."""
        keep = 2 * self.config.max_history_turns
        return list(history[-keep:]) if keep else []

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
        problem = self.question_problem(question)
        if problem:
            _logger.warning("refused a question on %s: %s", session.name, problem)
            yield session.history, session, question, _error(problem)
            return
        deadline = self.slots.deadline()
        past = list(session.history)
        asked = past + [{"role": "user", "content": question}]
        answer = ""
        yield asked + [{"role": "assistant", "content": answer}], session, "", ""
        seen = self._recent(past)
        try:
            pieces = self.slots.stream(
                lambda: self.chat.stream(session.clip, seen, question, max_new_tokens=self.config.max_new_tokens),
                deadline)
            for piece in pieces:
                answer += piece  # Gradio shows each yield in place of the last: yield the whole text so far
                yield asked + [{"role": "assistant", "content": answer}], session, "", ""
        except RequestTimeout as err:
            _logger.warning("answering on %s: %s", session.name, err)
            yield past, session, question, _error(str(err))
            return
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
        if not self.config.chat:
            return _error("multiple choice needs the LLM: this demo runs the encoder only")
        if session.clip is None:
            return _error("upload a clip or pick an example first")
        problem = self.choice_problem(question, options_text)
        if problem:
            _logger.warning("refused a multiple-choice question on %s: %s", session.name, problem)
            return _error(problem)
        question = (question or "").strip()
        options = _options(options_text)
        if not question or len(options) < 2:
            return _error("write a question and at least two options, one per line")
        try:
            chosen, scores = self.slots.call(self.chat.choose, session.clip, question, options,
                                             deadline=self.slots.deadline())
        except RequestTimeout as err:
            _logger.warning("ranking options on %s: %s", session.name, err)
            return _error(str(err))
        except Exception:
            _logger.exception("ranking options on %s failed", session.name)
            return _error("the model failed to rank the options (see the server log)")
        return choices_markdown(options, scores, chosen)

    # -------------------------------------------------------------------------------------------- API

    def api_ask(self, video: str | None, question: str) -> str:
        """``/ask``: one question about one clip, the whole answer at once (no history). Its upload is removed
        when the answer is given (unless a page session holds the same file)."""
        held = self._hold(video)
        try:
            return self._api_ask(video, question)
        finally:
            self._release(held)

    def _api_ask(self, video: str | None, question: str) -> str:
        def refuse(message: str) -> gr.Error:
            _logger.warning("/ask refused: %s", message)
            return gr.Error(message, print_exception=False)

        if not self.config.chat:
            raise refuse("chat is off: this demo runs the encoder only")
        if not video:
            raise refuse("no video given")
        question = (question or "").strip()
        if not question:
            raise refuse("no question given")
        problem = self.question_problem(question)
        if problem:
            raise refuse(f"error: {problem}")
        deadline = self.slots.deadline()
        try:
            clip = self._encode(video, deadline)
            pieces = self.slots.stream(
                lambda: self.chat.stream(clip, [], question, max_new_tokens=self.config.max_new_tokens), deadline)
            return "".join(pieces)
        except (DataError, RequestTimeout) as err:
            raise refuse(f"error: {err}") from None
        except Exception:
            _logger.exception("/ask on %s failed", display_name(video))
            raise gr.Error("error: the model failed to answer (see the server log)", print_exception=False) from None


def _options(options_text: str | None) -> list[str]:
    return [line.strip() for line in (options_text or "").splitlines() if line.strip()]


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
    model_event = {"concurrency_limit": config.concurrency, "concurrency_id": MODEL_CONCURRENCY_ID}
    private = {"api_visibility": "private"}  # the page's own events: not part of the API
    # Gradio removes the files this app received or wrote once they are older than a session's lifetime, and
    # all of them when the server shuts down (never the example clips: Gradio keeps those).
    age = max(1, math.ceil(config.session_ttl_s))
    with gr.Blocks(title="SeFAR: ask about a gymnastics clip", delete_cache=(min(age, 600), age)) as app:
        handlers = DemoHandlers(chat, config, received=lambda path: path in app.upload_file_set)
        session = gr.State(Session(), time_to_live=config.session_ttl_s, delete_callback=handlers.on_session_deleted)
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
                    validator=handlers.validate_ask, **model_event)
        clear.click(handlers.on_clear_chat, [session], [chatbot, session], **private)
        choose.click(handlers.on_choose, [mc_question, mc_options, session], [mc_result], **private,
                     validator=handlers.validate_choose, **model_event)
        api_button.click(handlers.api_ask, [api_video, api_question], [api_answer], api_name="ask",
                         validator=handlers.validate_api, **model_event)
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
