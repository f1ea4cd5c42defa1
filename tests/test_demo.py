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
