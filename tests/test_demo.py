"""The demo's parts without a browser: upload checks, the views, the example clips and the page's handlers."""

from __future__ import annotations

import os
import re

import gradio as gr
import numpy as np
import pytest
from demo_backend import CERTAINTY, TOP5, ScriptedChat
from videos import write_video

from common.errors import ConfigError, DataError, VideoReadError
from demo.app import DemoConfig, DemoHandlers, Session
from demo.examples import EXAMPLES, ensure_examples
from demo.upload import UploadLimits, check_upload
from demo.views import certainty_html, choices_markdown, layout_image, top5_values
from encoder.data.syngym import SIZES
from encoder.data.video import video_info


@pytest.fixture()
def clip(tmp_path):
    return write_video(tmp_path / "jump.mp4", n=30, size=(48, 64), fps=10)  # 3 s


@pytest.fixture()
def corrupt(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    return path


# ---------------------------------------------------------------------------------------------- uploads


def test_check_upload_accepts_a_video_and_returns_its_duration(clip):
    assert check_upload(clip, UploadLimits()) == pytest.approx(3.0)


def write_clip(path, n: int = 20):
    """A 2 s clip at 10 fps in the format of ``path``'s suffix (mp4, avi, webm or gif)."""
    if path.suffix == ".gif":
        from PIL import Image

        frames = [Image.fromarray(np.full((48, 64, 3), 10 * i, np.uint8)) for i in range(n)]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
        return path
    codec = {".mp4": "libx264", ".avi": "mpeg4", ".webm": "libvpx-vp9"}[path.suffix]
    return write_video(path, n=n, codec=codec, fps=10)


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".webm", ".gif"])
def test_every_accepted_format_is_checked_and_encoded(tmp_path, suffix):
    path = write_clip(tmp_path / f"clip{suffix}")
    assert check_upload(path, UploadLimits()) == pytest.approx(2.0)
    session, image, *_, status = DemoHandlers(ScriptedChat(), DemoConfig()).on_clip(str(path), Session())
    assert status == f"**clip{suffix}**: 8 frames sampled" and image is not None


def test_check_upload_rejects_type_size_length_and_corrupt_files(tmp_path, clip, corrupt):
    text = tmp_path / "notes.txt"
    text.write_text("not a clip")
    with pytest.raises(DataError, match=r"^notes.txt: unsupported file type '.txt'; upload one of mp4, avi"):
        check_upload(text, UploadLimits())
    with pytest.raises(DataError, match=r"^jump.mp4: 0.0 MB is over the 0.001 MB upload limit"):
        check_upload(clip, UploadLimits(max_mb=0.001))
    with pytest.raises(DataError, match=r"^jump.mp4: 3.0 s is longer than the 2.5 s clip limit"):
        check_upload(clip, UploadLimits(max_seconds=2.5))
    with pytest.raises(VideoReadError, match=r"^broken.mp4: cannot be read as a video") as err:
        check_upload(corrupt, UploadLimits())
    assert str(tmp_path) not in str(err.value)  # server paths never reach the page


def test_upload_limits_validate_every_field():
    with pytest.raises(ConfigError, match="max_mb=0.*max_seconds=-1"):
        UploadLimits(max_mb=0, max_seconds=-1)


# ------------------------------------------------------------------------------------------------ views


def test_layout_image_has_one_row_per_element_and_the_frames_in_place():
    frames = np.zeros((8, 32, 48, 3), np.uint8)
    for i in range(8):
        frames[i, ..., 0] = 30 * i  # frame i is red level 30 i
    layout = [[1, 5], [3, 7], [0, 2, 4, 6]]
    image = layout_image(frames, layout)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    # Row r, column c shows frame layout[r][c]: sample each tile's centre (TILE=112 short side -> 168 x 112).
    from demo.views import CAPTION_HEIGHT, GAP, LABEL_WIDTH, TILE

    tw, th = round(48 * TILE / 32), TILE
    assert image.shape[1] == LABEL_WIDTH + 4 * (tw + GAP) + GAP
    assert image.shape[0] == 3 * (th + CAPTION_HEIGHT + GAP) + GAP
    for r, row in enumerate(layout):
        for c, index in enumerate(row):
            y = GAP + r * (th + CAPTION_HEIGHT + GAP) + th // 2
            x = LABEL_WIDTH + GAP + c * (tw + GAP) + tw // 2
            assert abs(int(image[y, x, 0]) - 30 * index) <= 2, (r, c)


@pytest.mark.parametrize("layout, message", [([[0, 9]], "outside the 8"), ([], "non-empty"), ([[1], []], "non-empty")])
def test_layout_image_rejects_bad_layouts(layout, message):
    with pytest.raises(ValueError, match=message):
        layout_image(np.zeros((8, 16, 16, 3), np.uint8), layout)


def test_top5_and_certainty_views():
    assert list(top5_values(TOP5)) == [name for name, _ in TOP5]
    assert top5_values(TOP5)["salto forward tucked"] == pytest.approx(0.41)
    page = certainty_html(CERTAINTY, passes=10)
    for key in ("mu", "sigma", "tau1", "tau2", "eta"):
        assert re.search(rf'data-key="{key}".*?{CERTAINTY[key]:.3f}', page)
    assert "10 times" in page
    with pytest.raises(ValueError, match="eta"):
        certainty_html({k: v for k, v in CERTAINTY.items() if k != "eta"})


def test_choices_markdown_marks_the_chosen_option_and_escapes_cells():
    text = choices_markdown(["a | b", "<c>"], [-1.5, -0.25], 1)
    assert text.startswith("**Answer:** &lt;c&gt;")
    rows = text.splitlines()[-2:]
    assert rows[0] == "|  | a &#124; b | -1.500 |"
    assert rows[1] == "| ✅ | &lt;c&gt; | -0.250 |"
    with pytest.raises(ValueError):
        choices_markdown(["a"], [0.0], 1)


def test_choices_markdown_keeps_options_that_share_a_name():
    # FineGym and SynGym name some elements alike on two events; every option the user wrote keeps its row
    text = choices_markdown(["salto forward tucked", "salto forward tucked", "salto backward tucked"],
                            [-2.0, -0.5, -1.0], 1)
    rows = text.splitlines()[-3:]
    assert [row.split(" | ")[-1] for row in rows] == ["-2.000 |", "-0.500 |", "-1.000 |"]
    assert [row.startswith("| ✅") for row in rows] == [False, True, False]


# --------------------------------------------------------------------------------------------- examples


def test_examples_are_rendered_once_as_readable_syngym_clips(tmp_path):
    examples = ensure_examples(tmp_path)
    assert [label for label, _ in examples][:2] == ["FX: salto forward tucked", "FX: salto backward tucked"]
    preset = SIZES["default"]
    for _, path in examples:
        info = video_info(path)
        assert preset.min_frames <= info.num_frames <= preset.max_frames
        assert (info.width, info.height) == (preset.frame_size, preset.frame_size)
    stamps = [path.stat().st_mtime_ns for _, path in examples]
    again = ensure_examples(tmp_path)
    assert [p for _, p in again] == [p for _, p in examples]
    assert [p.stat().st_mtime_ns for _, p in again] == stamps  # not rendered twice
    assert len(examples) == len(EXAMPLES) and not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------- handlers


def test_demo_config_collects_every_problem():
    with pytest.raises(ConfigError, match="port=0.*concurrency=0.*queue_size=0.*max_new_tokens=0.*max_sessions=0"):
        DemoConfig(port=0, concurrency=0, queue_size=0, max_new_tokens=0, max_sessions=0)


def test_on_clip_encodes_the_upload_and_resets_the_chat(clip):
    handlers = DemoHandlers(ScriptedChat(), DemoConfig())
    old = Session(clip=object(), name="old.mp4", history=[{"role": "user", "content": "hi"}])
    session, image, top5, certainty, chat, status = handlers.on_clip(str(clip), old)
    assert session is not old and session.name == "jump.mp4" and session.history == [] and chat == []
    assert session.clip.frames.shape[0] == 8 and image.ndim == 3
    assert list(top5) == [name for name, _ in TOP5] and "η" in certainty
    assert status == "**jump.mp4**: 8 frames sampled"


def test_on_clip_reports_bad_uploads_in_the_page(corrupt, tmp_path):
    handlers = DemoHandlers(ScriptedChat(), DemoConfig())
    session, image, top5, _, _, status = handlers.on_clip(str(corrupt), Session())
    assert status.startswith("**error:** broken.mp4: cannot be read as a video")
    assert session.clip is None and image is None and top5 is None
    assert handlers.on_clip(None, Session())[-1] == ""  # cleared upload: no message


def test_on_clip_hides_internal_errors(clip):
    class Broken(ScriptedChat):
        def encode(self, video):
            raise RuntimeError(f"boom in {video}")

    status = DemoHandlers(Broken(), DemoConfig()).on_clip(str(clip), Session())[-1]
    assert status == "**error:** jump.mp4: internal error (see the server log)"


def test_on_ask_streams_cumulative_text_and_keeps_the_history(clip):
    chat = ScriptedChat()
    handlers = DemoHandlers(chat, DemoConfig(max_new_tokens=64))
    session = handlers.on_clip(str(clip), Session())[0]
    steps = list(handlers.on_ask("  what is it?  ", session))
    answers = [messages[-1]["content"] for messages, *_ in steps]
    assert answers[0] == "" and answers[-1] == "jump.mp4 / turn 1: what is it? "
    assert all(a.startswith(b) for a, b in zip(answers[1:], answers))  # each yield extends the last
    assert len(set(answers)) == 8  # "" + seven words, one piece at a time
    assert steps[-1][2] == "" and steps[-1][3] == ""  # question box cleared, no error
    list(handlers.on_ask("and then?", session))
    assert chat.calls[1] == ("jump.mp4", steps[-1][0], "and then?")  # the first turn went in as history
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]
    assert session.history[-1]["content"] == "jump.mp4 / turn 2: and then? "
    assert handlers.on_clear_chat(session) == ([], session) and session.history == []


def test_on_ask_needs_a_clip_a_question_and_chat():
    handlers = DemoHandlers(ScriptedChat(), DemoConfig())
    assert list(handlers.on_ask("what?", Session()))[-1][3] == "**error:** upload a clip or pick an example first"
    assert list(handlers.on_ask("   ", Session()))[-1][3] == ""
    off = DemoHandlers(ScriptedChat(), DemoConfig(chat=False))
    assert "encoder only" in list(off.on_ask("what?", Session(clip=object())))[-1][3]
    assert "encoder only" in off.on_choose("q", "a\nb", Session(clip=object()))


def test_on_ask_reports_a_failing_model_and_keeps_the_question(clip):
    class Failing(ScriptedChat):
        def stream(self, *args, **kwargs):
            yield "half "
            raise RuntimeError("out of memory")

    handlers = DemoHandlers(Failing(), DemoConfig())
    session = handlers.on_clip(str(clip), Session())[0]
    messages, _, box, status = list(handlers.on_ask("why?", session))[-1]
    assert messages == [] and box == "why?" and status.startswith("**error:** the model failed")
    assert session.history == []


def test_on_choose_ranks_options(clip):
    handlers = DemoHandlers(ScriptedChat(), DemoConfig())
    session = handlers.on_clip(str(clip), Session())[0]
    result = handlers.on_choose("Which element?", "salto backward piked\n\nturn\n", session)
    assert result.startswith("**Answer:** turn") and result.count("| ✅ |") == 1
    assert handlers.on_choose("Which?", "only one", session).startswith("**error:** write a question")


def test_api_ask_answers_in_one_piece_and_raises_gradio_errors(clip, corrupt):
    handlers = DemoHandlers(ScriptedChat(), DemoConfig())
    assert handlers.api_ask(str(clip), "what?") == "jump.mp4 / turn 1: what? "
    with pytest.raises(gr.Error, match="broken.mp4: cannot be read"):
        handlers.api_ask(str(corrupt), "what?")
    with pytest.raises(gr.Error, match="no question"):
        handlers.api_ask(str(clip), " ")


# --------------------------------------------------------------------------------------------------- CLI


def test_sefar_demo_says_how_to_make_missing_exports(tmp_path, capsys):
    from sefar.cli import main

    assert main(["demo", "--encoder", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    hint = "no encoder export here; make it with `make quickstart` or pass --encoder EXPORT"
    assert err == f"error: {tmp_path / 'none'}: {hint}"
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "config.json").write_text("{}")
    assert main(["demo", "--encoder", str(tmp_path / "enc"), "--bridge", str(tmp_path / "adapter")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'adapter'}: no adapter export here; make it with `make quickstart`")
    assert err.endswith("or --encoder-only for the page without chat")


def test_file_names_show_as_they_are_in_the_status_line(tmp_path):
    path = write_clip(tmp_path / "my_*clip*_[1].mp4")
    status = DemoHandlers(ScriptedChat(), DemoConfig()).on_clip(str(path), Session())[-1]
    assert status == r"**my\_\*clip\*\_\[1\].mp4**: 8 frames sampled"


# ----------------------------------------------------------------------------------- hostile requests
# Each hostile request gets one plain message (or is refused before the model), and the demo answers the next
# normal request right after it.


class Recording(ScriptedChat):
    """The scripted backend, recording every text it tokenizes and every stream it closes."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(delay)
        self.counted: list[int] = []  # lengths of the texts given to count_tokens
        self.closed = 0

    def count_tokens(self, text):
        self.counted.append(len(text))
        return super().count_tokens(text)

    def stream(self, *args, **kwargs):
        try:
            yield from super().stream(*args, **kwargs)
        finally:
            self.closed += 1


def answered(handlers, session, question="and now?"):
    """The last chat message after asking ``question`` (the demo still answers), and the status line."""
    messages, _, _, status = list(handlers.on_ask(question, session))[-1]
    return messages[-1]["content"], status


def test_the_new_limits_are_validated_with_the_others():
    with pytest.raises(ConfigError, match="max_question_tokens=0.*max_options=1.*max_history_turns=-1"
                                          ".*request_timeout_s=0"):
        DemoConfig(max_question_tokens=0, max_options=1, max_history_turns=-1, request_timeout_s=0)
    with pytest.raises(ConfigError, match="request_timeout_s=inf"):
        DemoConfig(request_timeout_s=float("inf"))
    with pytest.raises(ConfigError, match="max_frame_pixels=0.*max_frames=-1.*max_pixels=1.5"):
        UploadLimits(max_frame_pixels=0, max_frames=-1, max_pixels=1.5)


def test_a_huge_question_is_refused_before_the_model_and_the_next_one_is_answered(clip):
    chat = Recording()
    handlers = DemoHandlers(chat, DemoConfig(max_question_tokens=8))
    session = handlers.on_clip(str(clip), Session())[0]
    messages, _, box, status = list(handlers.on_ask("word " * 9, session))[-1]
    assert status == "**error:** the question is too long: 9 tokens, over the limit of 8; shorten it"
    assert messages == [] and box == ("word " * 9).strip()  # the question stays in its box to be shortened
    status = list(handlers.on_ask("x" * 200_000, session))[-1][3]
    assert status.startswith("**error:** the question is too long: 200,000 characters, over the limit of 8 tokens")
    assert max(chat.counted) <= 8 * 16  # the tokenizer never saw the 200 KB question
    assert chat.calls == [] and session.history == []  # no model work for either
    assert answered(handlers, session) == ("jump.mp4 / turn 1: and now? ", "")


def test_multiple_choice_bounds_the_question_each_option_and_their_number(clip):
    chat = Recording()
    handlers = DemoHandlers(chat, DemoConfig(max_question_tokens=4, max_options=3))
    session = handlers.on_clip(str(clip), Session())[0]
    assert handlers.on_choose("which one is it now?", "a\nb", session) == (
        "**error:** the question is too long: 5 tokens, over the limit of 4; shorten it")
    assert handlers.on_choose("which?", "a\nb b b b b\nc", session) == (
        "**error:** option 2 is too long: 5 tokens, over the limit of 4; shorten it")
    assert handlers.on_choose("which?", "a\nb\nc\nd", session) == "**error:** too many options: 4, at most 3"
    huge = handlers.on_choose("which?", "a\n" + "y" * 48_000, session)
    assert huge.startswith("**error:** the options are too long: 48,002 characters for at most 3 options")
    assert max(chat.counted) <= 4 * 16
    assert handlers.on_choose("which?", "\n" * 20 + "a\nbb\n" + "\n" * 20, session).startswith("**Answer:** a")


def test_the_validators_refuse_long_text_before_the_queue(clip):
    handlers = DemoHandlers(ScriptedChat(), DemoConfig(max_question_tokens=2, max_options=2))
    ok, state = handlers.validate_ask("one two", Session())
    assert ok == gr.validate(True, "") and state == gr.validate(True, "")
    refused, _ = handlers.validate_ask("one two three", Session())
    assert refused == gr.validate(False, "the question is too long: 3 tokens, over the limit of 2; shorten it")
    too_many = gr.validate(False, "too many options: 3, at most 2")
    assert handlers.validate_choose("q", "a\nb\nc", Session())[0] == too_many
    assert handlers.validate_api(str(clip), "x" * 10_000)[1]["is_valid"] is False
    assert handlers.validate_api(str(clip), "what?") == (gr.validate(True, ""), gr.validate(True, ""))

    class NoTokenizer(ScriptedChat):  # the encoder-only backend: its handlers say that chat is off
        def count_tokens(self, text):
            raise AssertionError("no tokenizer on the encoder-only page")

    off = DemoHandlers(NoTokenizer(), DemoConfig(chat=False))
    assert off.validate_api(str(clip), "what?")[1]["is_valid"] and off.validate_choose("q", "a\nb")[0]["is_valid"]
    with pytest.raises(gr.Error, match="chat is off"):
        off.api_ask(str(clip), "what?")


def test_the_ask_api_refuses_long_questions_and_answers_the_next_one(clip):
    handlers = DemoHandlers(ScriptedChat(), DemoConfig(max_question_tokens=3))
    with pytest.raises(gr.Error) as err:
        handlers.api_ask(str(clip), "a b c d")
    assert err.value.message == "error: the question is too long: 4 tokens, over the limit of 3; shorten it"
    assert err.value.print_exception is False
    assert handlers.api_ask(str(clip), "what?") == "jump.mp4 / turn 1: what? "


def test_a_clip_that_decodes_too_large_is_refused_from_its_metadata(tmp_path, clip):
    from PIL import Image

    big = tmp_path / "huge.gif"  # a small file (a few KB) whose two frames decode to 3000x3000 pixels each
    Image.new("RGB", (3000, 3000), (200, 10, 10)).save(big, save_all=True,
                                                      append_images=[Image.new("RGB", (3000, 3000))], duration=100)
    assert big.stat().st_size < 200_000

    class NoDecoding(ScriptedChat):
        def encode(self, video):
            assert "huge" not in str(video), "the oversized clip reached the decoder"
            return super().encode(video)

    handlers = DemoHandlers(NoDecoding(), DemoConfig())
    session, image, *_, status = handlers.on_clip(str(big), Session())
    assert status == ("**error:** huge.gif: 3000x3000 frames are over the 8,847,360 pixel limit per frame; "
                      "upload a smaller video")
    assert session.clip is None and image is None
    with pytest.raises(gr.Error, match="huge.gif: 3000x3000 frames are over"):
        handlers.api_ask(str(big), "what?")
    with pytest.raises(DataError, match=r"^jump.mp4: 30 frames are over the 29 frame limit"):
        check_upload(clip, UploadLimits(max_frames=29))
    with pytest.raises(DataError, match=r"^jump.mp4: 64x48 x 30 frames is over the 92,159 decoded pixel limit"):
        check_upload(clip, UploadLimits(max_pixels=64 * 48 * 30 - 1))
    assert check_upload(clip, UploadLimits(max_frame_pixels=64 * 48, max_frames=30, max_pixels=64 * 48 * 30)) == 3.0
    session = handlers.on_clip(str(clip), session)[0]
    assert answered(handlers, session) == ("jump.mp4 / turn 1: and now? ", "")


def test_a_request_past_the_time_limit_is_stopped_and_frees_the_model_slot(clip):
    import time

    chat = Recording(delay=0.2)
    handlers = DemoHandlers(chat, DemoConfig(request_timeout_s=0.5, concurrency=1))
    session = handlers.on_clip(str(clip), Session())[0]
    began = time.monotonic()
    messages, _, box, status = list(handlers.on_ask("tell me a very long story about it", session))[-1]
    assert time.monotonic() - began < 1.5
    assert status == "**error:** the request ran past the 0.5 s time limit and was stopped"
    assert messages == [] and box == "tell me a very long story about it" and session.history == []
    deadline = time.monotonic() + 2
    while chat.closed < 1 and time.monotonic() < deadline:  # the worker stops at the next word
        time.sleep(0.02)
    assert chat.closed == 1
    chat.delay = 0.0
    assert answered(handlers, session) == ("jump.mp4 / turn 1: and now? ", "")


def test_a_backend_call_that_hangs_keeps_its_slot_until_it_returns(clip):
    import threading
    import time

    release = threading.Event()

    class Hanging(ScriptedChat):
        def choose(self, clip, question, options):
            if question == "hang?":
                release.wait(10)
            return super().choose(clip, question, options)

    handlers = DemoHandlers(Hanging(), DemoConfig(request_timeout_s=0.3, concurrency=1))
    session = handlers.on_clip(str(clip), Session())[0]
    assert handlers.on_choose("hang?", "a\nbb", session) == (
        "**error:** the request ran past the 0.3 s time limit and was stopped")
    # The model is still busy with it: the next request waits for the slot, within its own limit.
    assert handlers.on_choose("which?", "a\nbb", session) == (
        "**error:** the model stayed busy past the 0.3 s time limit; try again")
    release.set()
    time.sleep(0.05)
    assert handlers.on_choose("which?", "a\nbb", session).startswith("**Answer:** a")


def test_backend_errors_show_one_plain_message_and_the_next_request_is_answered(clip, caplog):
    handlers = DemoHandlers(ScriptedChat(), DemoConfig())
    session = handlers.on_clip(str(clip), Session())[0]
    messages, _, box, status = list(handlers.on_ask("what is <video> here?", session))[-1]
    assert status == "**error:** the model failed to answer (see the server log)" and messages == []
    assert box == "what is <video> here?" and "Traceback" not in status
    assert handlers.on_choose("which <video>?", "a\nbb", session) == (
        "**error:** the model failed to rank the options (see the server log)")
    with pytest.raises(gr.Error) as err:
        handlers.api_ask(str(clip), "<video>")
    assert err.value.message == "error: the model failed to answer (see the server log)"
    assert answered(handlers, session) == ("jump.mp4 / turn 1: and now? ", "")
    assert handlers.api_ask(str(clip), "what?") == "jump.mp4 / turn 1: what? "

    class BrokenTokenizer(ScriptedChat):
        def count_tokens(self, text):
            raise RuntimeError("tokenizer exploded")

    broken = DemoHandlers(BrokenTokenizer(), DemoConfig())
    session = broken.on_clip(str(clip), Session())[0]
    assert list(broken.on_ask("what?", session))[-1][3] == (
        "**error:** the question could not be checked (see the server log)")
    assert broken.validate_ask("what?")[0]["is_valid"] is False


def test_expected_rejections_log_one_line_without_a_traceback(clip, corrupt, caplog):
    import logging

    caplog.set_level(logging.INFO)
    handlers = DemoHandlers(ScriptedChat(), DemoConfig(max_question_tokens=2))
    handlers.on_clip(str(corrupt), Session())
    with pytest.raises(gr.Error) as err:
        handlers.api_ask(str(corrupt), "what?")
    assert err.value.print_exception is False  # Gradio prints no traceback for it either
    with pytest.raises(gr.Error):
        handlers.api_ask(str(clip), "a b c")
    session = handlers.on_clip(str(clip), Session())[0]
    list(handlers.on_ask("a b c", session))
    handlers.on_choose("q", "a\nb\nc d e", session)
    refusals = [r for r in caplog.records if r.name.startswith("demo.")]
    assert len(refusals) >= 5 and all(r.exc_info is None and "\n" not in r.getMessage() for r in refusals)


def test_uploads_are_removed_when_replaced_when_the_session_expires_and_after_an_api_answer(tmp_path, clip):
    import shutil

    received: set[str] = set()

    def receive(name: str) -> str:
        folder = tmp_path / "uploads" / name.replace(".", "_")
        folder.mkdir(parents=True)
        path = str(shutil.copy(clip, folder / name))
        received.add(path)
        return path

    handlers = DemoHandlers(ScriptedChat(), DemoConfig(), received=received.__contains__)
    first, second, api = receive("first.mp4"), receive("second.mp4"), receive("api.mp4")
    session = handlers.on_clip(first, Session())[0]
    assert session.upload == first and os.path.exists(first)
    other = handlers.on_clip(first, Session())[0]  # another session with the same file (same content and name)
    session = handlers.on_clip(second, session)[0]  # replaced: the first is still held by the other session
    assert os.path.exists(first) and session.upload == second
    handlers.on_clip(None, other)  # cleared: now nobody holds it
    assert not os.path.exists(first) and not os.path.exists(os.path.dirname(first))  # its folder went too
    session = handlers.on_clip(str(clip), session)[0]  # an example or any file the demo did not receive
    assert not os.path.exists(second) and session.upload == "" and clip.exists()
    again = receive("again.mp4")
    session = handlers.on_clip(again, session)[0]
    handlers.on_session_deleted(session)  # the session expired
    assert not os.path.exists(again) and clip.exists()
    assert handlers.api_ask(api, "what?") == "api.mp4 / turn 1: what? " and not os.path.exists(api)
    refused = receive("refused.mp4")
    status = DemoHandlers(ScriptedChat(), DemoConfig(limits=UploadLimits(max_frames=1)),
                          received=received.__contains__).on_clip(refused, Session())[-1]
    assert "frame limit" in status and not os.path.exists(refused)  # a refused upload is not kept either


def test_the_app_removes_its_uploads_on_expiry_and_shutdown():
    from demo.app import build_app

    app = build_app(ScriptedChat(), DemoConfig(session_ttl_s=7200))
    assert app.delete_cache == (600, 7200)  # Gradio's: older than a session's lifetime, and all at shutdown
    states = [b for b in app.blocks.values() if isinstance(b, gr.State)]
    assert len(states) == 1 and states[0].delete_callback.__name__ == "on_session_deleted"
    assert states[0].time_to_live == 7200


def test_sefar_demo_flags_reach_the_config(monkeypatch, tmp_path, capsys):
    from sefar import demo_cmd
    from sefar.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["demo", "--max-question-tokens", "64", "--max-options", "4", "--request-timeout-s",
                              "30", "--max-frame-pixels", "2073600", "--max-frames", "900", "--max-pixels", "2e9"])
    assert (args.max_question_tokens, args.max_options, args.request_timeout_s) == (64, 4, 30.0)
    assert (args.max_frame_pixels, args.max_frames, args.max_pixels) == (2073600, 900, 2_000_000_000)
    defaults = parser.parse_args(["demo"])
    limits, config = UploadLimits(), DemoConfig()
    assert (defaults.max_frame_pixels, defaults.max_frames, defaults.max_pixels) == (
        limits.max_frame_pixels, limits.max_frames, limits.max_pixels)
    assert (defaults.max_question_tokens, defaults.max_options, defaults.request_timeout_s) == (
        config.max_question_tokens, config.max_options, config.request_timeout_s)
    for bad in (["--max-question-tokens", "0"], ["--max-options", "1"], ["--request-timeout-s", "0"],
                ["--max-pixels", "1.5"], ["--max-frames", "-3"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["demo", *bad])
    assert "error:" in capsys.readouterr().err
    assert demo_cmd.MAX_PIXELS == limits.max_pixels


# --------------------------------------------------------------------------------------------- fuzzing

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

HOSTILE = st.sampled_from(["<video>", "\x00", "\u202e", "```", "<script>alert(1)</script>", "{{", "%s", "\r\n",
                           "\ud7ff", "🤸", "*" * 40, " " * 300, "word " * 300, "x" * 20_000])
QUESTIONS = st.one_of(st.text(max_size=60), st.lists(st.one_of(HOSTILE, st.text(max_size=20)), max_size=6).map("".join))


@pytest.fixture(scope="module")
def fuzz_handlers(tmp_path_factory):
    clip = write_video(tmp_path_factory.mktemp("fuzz") / "jump.mp4", n=30, size=(48, 64), fps=10)
    handlers = DemoHandlers(ScriptedChat(), DemoConfig(max_question_tokens=32, max_new_tokens=8))
    return handlers, str(clip), handlers.on_clip(str(clip), Session())[0]


@settings(derandomize=True, database=None, deadline=None, max_examples=150, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(question=QUESTIONS)
def test_fuzzed_questions_get_an_answer_or_one_clear_message(fuzz_handlers, question):
    handlers, clip, session = fuzz_handlers
    session.history = []
    messages, _, _, status = list(handlers.on_ask(question, session))[-1]
    if not question.strip():
        assert status == ""
    elif status:
        assert status.startswith("**error:** ") and "\n" not in status and "Traceback" not in status
        assert len(status) < 200
    else:
        assert messages[-1]["role"] == "assistant" and messages[-1]["content"].startswith("jump.mp4 / turn 1:")
    ok, _ = handlers.validate_ask(question, session)
    assert ok["is_valid"] is (handlers.question_problem(question) is None)
    try:
        answer = handlers.api_ask(clip, question)
    except gr.Error as err:
        assert err.print_exception is False and "\n" not in err.message and len(err.message) < 200
    else:
        assert answer.startswith("jump.mp4 / turn 1:")
    result = handlers.on_choose(question, "salto\ngiant circle", session)
    assert result.startswith(("**Answer:** salto", "**error:** ")) and "Traceback" not in result
