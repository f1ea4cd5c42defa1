"""Bad input through the CLI gives one clear ``error:`` line or a named problem, never a traceback, a blow-up or a
silent wrong result (the cases of the hardening issue, each reproduced as it was reported)."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest

from common.errors import DataError, ListFormatError
from common.textio import read_text_lines
from encoder.data.check import check_dataset
from encoder.data.finediving import load_pickle
from encoder.data.lists import read_video_list
from encoder.data.splits import read_samples
from encoder.data.video import verify_video
from gymqa.question import Question, write_questions
from sefar.cli import main
from videos import write_video

CATEGORIES = ("Clabel: 0; set: 21; Glabel: 10; (FX) stag jump\n"
              "Clabel: 1; set: 21; Glabel: 11; (FX) split jump\n"
              "Clabel: 2; set: 31; Glabel: 20; (BB) split jump\n")


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------------ labels and lists


def test_huge_label_is_one_error_not_a_memory_blow_up(tmp_path, capsys):
    lst = tmp_path / "list.txt"
    lst.write_text("clip.mp4 99999999999999999999999\n")
    code, out, _ = _run(["data", "check", str(lst), "--lists-only"], capsys)
    assert code == 1 and f"problem: {lst}:1: label 99999999999999999999999 is too large" in out
    code, _, err = _run(["data", "split", str(lst), "--out", str(tmp_path / "split"), "--ratio", "0.5"], capsys)
    assert code == 2 and _one_error_line(err).startswith(f"error: {lst}:1: label")
    assert not (tmp_path / "split").exists()


def test_class_count_comes_from_the_categories_file_beside_the_list(tmp_path, capsys):
    (tmp_path / "categories.txt").write_text(CATEGORIES)
    lst = tmp_path / "extra.txt"
    lst.write_text("a.mp4 1\nb.mp4 2\nc.mp4 500\n")
    with pytest.raises(ListFormatError, match=r"extra.txt:3: label 500 is out of range for the 3 classes of "
                                              r"categories.txt$"):
        read_video_list(lst)
    code, out, _ = _run(["data", "check", str(lst), "--lists-only"], capsys)
    assert code == 1 and "extra.txt:3: label 500 is out of range" in out
    code, _, err = _run(["data", "split", str(lst), "--out", str(tmp_path / "s"), "--ratio", "0.5"], capsys)
    assert code == 2 and "extra.txt:3: label 500 is out of range for 3 classes" in _one_error_line(err)
    lst.write_text("a.mp4 1\nb.mp4 2\n")
    vl = read_video_list(lst)
    assert vl.num_classes == 3 and vl.classes[2] == "(BB) split jump"


def test_a_folder_of_lists_does_not_read_its_categories_file_as_a_list(tmp_path):
    (tmp_path / "categories.txt").write_text(CATEGORIES)
    (tmp_path / "train.txt").write_text("a.mp4 0\n")
    report = check_dataset(tmp_path, videos="skip")
    assert [lr.name for lr in report.lists] == ["train.txt"] and report.ok


def test_a_layout_with_no_list_is_a_problem_and_problems_are_listed_once(tmp_path):
    (tmp_path / "ucf").mkdir()
    (tmp_path / "ucf" / "classInd.txt").write_text("1 A\n")  # no trainlist01.txt
    report = check_dataset(tmp_path / "ucf")
    assert report.problems() == [f"{tmp_path / 'ucf'}: found no list to check in this ucf101 layout"]
    (tmp_path / "hmdb").mkdir()
    (tmp_path / "hmdb" / "a_test_split1.txt").write_text("x.avi 7\n")
    report = check_dataset(tmp_path / "hmdb")
    assert len(report.lists) == 2 and report.problems() == [
        f"{tmp_path / 'hmdb' / 'a_test_split1.txt'}:1: expected '<video>.avi <0|1|2>', got 'x.avi 7'"]


def test_old_mac_line_endings_are_lines(tmp_path):
    lst = tmp_path / "mac.txt"
    lst.write_bytes(b"a.mp4 1\rb.mp4 2\r")
    assert [(s.path, s.label) for s in read_samples(lst)] == [("a.mp4", 1), ("b.mp4", 2)]
    assert read_text_lines(lst) == ["a.mp4 1", "b.mp4 2"]


def test_unicode_digits_are_not_labels(tmp_path, capsys):
    (tmp_path / "classInd.txt").write_text("\u00b2 x\n")
    lst = tmp_path / "l.txt"
    lst.write_text("a.mp4 \u00b2\n")
    code, out, _ = _run(["data", "check", str(lst), "--lists-only"], capsys)
    assert code == 1 and "classInd.txt:1: expected '<index> <class name>'" in out


def test_clip_id_collisions_and_one_file_under_two_paths_are_problems(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_video(tmp_path / folder / "clip.mp4", n=4)
    lst = tmp_path / "list.txt"
    lst.write_text(f"{tmp_path}/a/clip.mp4 0\n{tmp_path}/b/clip.mp4 0\nb/clip.mp4 0\n./b/clip.mp4 0\n")
    report = check_dataset(lst, videos="exists")
    problems = report.problems()
    assert not report.ok and len(problems) == 2, problems
    assert "entries 1 and 2" in problems[0] and "same clip id 'clip'" in problems[0]
    assert "entries 3 and 4 ('b/clip.mp4', './b/clip.mp4') are the same file" in problems[1]


def test_missing_files_are_named_without_errno(tmp_path, capsys):
    code, _, err = _run(["data", "split", str(tmp_path / "nope.txt"), "--out", str(tmp_path), "--ratio", "0.5"],
                        capsys)
    assert code == 2 and _one_error_line(err) == f"error: {tmp_path / 'nope.txt'}: no such file or folder"
    code, _, err = _run(["gymqa", "stats", str(tmp_path / "nope.json")], capsys)
    assert code == 2 and "Errno" not in _one_error_line(err)


# ------------------------------------------------------------------------------------------ truncated videos


def _cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


VIDEO_KINDS = {
    "faststart.mp4": dict(codec="libx264", options={"movflags": "faststart"}),
    "clip.webm": dict(codec="libvpx"),
    "clip.avi": dict(codec="mpeg4"),
    "clip.gif": dict(codec="gif", pix_fmt="rgb8"),
}


@pytest.mark.parametrize("name", sorted(VIDEO_KINDS))
@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_data_check_names_cut_videos(tmp_path, name, fraction, capsys):
    whole = write_video(tmp_path / name, n=17, **VIDEO_KINDS[name])
    assert verify_video(whole).info.num_frames == 17
    assert verify_video(whole, deep=True).decoded_frames == 17
    cut = _cut(whole, tmp_path / f"cut_{name}", fraction)
    with pytest.raises(DataError, match="cut_"):
        verify_video(cut)
    (tmp_path / "list.txt").write_text(f"{name} 0\ncut_{name} 0\n")
    code, out, err = _run(["data", "check", str(tmp_path / "list.txt"), "--json"], capsys)
    report = json.loads(out)
    assert code == 1 and report["lists"][0]["unreadable"][0].startswith(f"{cut}: ")
    assert "ERROR" not in err and "Traceback" not in err  # decord's own log lines stay out of the output


@pytest.mark.parametrize("name", ["long_audio.mkv", "long_audio.mp4"])
def test_a_whole_video_with_a_longer_audio_track_is_whole(tmp_path, name):
    import av
    import numpy as np

    path = tmp_path / name
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=44100)
        audio.layout = "stereo"
        for i in range(25):  # 1 s of video
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 8, np.uint8), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        for i in range(75):  # 3 s of audio
            samples = av.AudioFrame.from_ndarray(np.zeros((2, 1764), np.float32), format="fltp", layout="stereo")
            samples.sample_rate, samples.pts = 44100, i * 1764
            for packet in audio.encode(samples):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    check = verify_video(path, deep=True)
    assert check.info.num_frames == check.decoded_frames == 25 and abs(check.declared_frames - 25) <= 1


def test_deep_check_decodes_every_frame_and_says_how_long(tmp_path, capsys):
    write_video(tmp_path / "a.mp4", n=9)
    (tmp_path / "list.txt").write_text("a.mp4 0\n")
    code, out, _ = _run(["data", "check", str(tmp_path / "list.txt"), "--deep"], capsys)
    assert code == 0 and "deep check: decoded every frame of 1 clips in " in out and out.rstrip().endswith("OK")


# ------------------------------------------------------------------------------------------ pickles


def test_pickle_that_asks_for_huge_memory_is_refused(tmp_path):
    claims = tmp_path / "claims.pkl"  # BINBYTES8 claiming 10**11 bytes
    claims.write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 10**11) + b"abc.")
    sized = tmp_path / "sized.pkl"  # bytearray(10**11) through REDUCE
    sized.write_bytes(b"\x80\x02cbuiltins\nbytearray\n\x8a\x05" + (10**11).to_bytes(5, "little") + b"\x85R.")
    for path in (claims, sized):
        with pytest.raises(DataError, match="not a valid pickle"):
            load_pickle(path)
    ok = tmp_path / "ok.pkl"
    ok.write_bytes(pickle.dumps({"k": bytearray(b"ab"), "b": b"xy"}, protocol=2))
    assert load_pickle(ok) == {"k": bytearray(b"ab"), "b": b"xy"}


# ------------------------------------------------------------------------------------------ zero results


def _questions(path: Path, n: int = 3) -> Path:
    questions = [Question(id=f"q{i}", clip_id=f"c{i}", question="What?", options=("a", "b", "c", "d"),
                          answer=i % 4, type="element", level="element") for i in range(n)]
    write_questions(path, questions)
    return path


@pytest.mark.parametrize("predictions, reason", [
    ("", "no predictions: the file is empty"),
    ('{"id": "x1", "letter": "A"}\n{"id": "x2", "letter": "B"}\n',
     "none of its 2 prediction ids matches a question id of q.jsonl"),
])
def test_score_with_no_matching_prediction_is_an_error(tmp_path, capsys, predictions, reason):
    questions = _questions(tmp_path / "q.jsonl")
    (tmp_path / "p.jsonl").write_text(predictions)
    code, out, err = _run(["gymqa", "score", str(questions), str(tmp_path / "p.jsonl")], capsys)
    assert code == 2 and not out and reason in _one_error_line(err)
    (tmp_path / "p.jsonl").write_text('{"id": "q0", "letter": "A"}\n')  # one match: a real (partial) result
    code, out, _ = _run(["gymqa", "score", str(questions), str(tmp_path / "p.jsonl")], capsys)
    assert code == 0 and "| overall | all | 3 | 1 | 33.33% |" in out


def test_gymqa_build_with_an_empty_list_is_an_error(tmp_path, capsys):
    (tmp_path / "cat.txt").write_text(CATEGORIES)
    (tmp_path / "train.txt").write_text("\n")
    (tmp_path / "val.txt").write_text("yt_E_000001_000002_A_0000_0001 0\n")
    code, _, err = _run(["gymqa", "build", "--categories", str(tmp_path / "cat.txt"), "--train",
                         str(tmp_path / "train.txt"), "--val", str(tmp_path / "val.txt"), "--out",
                         str(tmp_path / "out")], capsys)
    assert code == 2 and "train.txt: the element list has no clips" in _one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_stats_say_when_classes_are_counted_by_answer_name(tmp_path, capsys):
    questions = [Question(id=f"q{i}", clip_id=f"c{i}", question="What?", options=("split jump", "b", "c", "d"),
                          answer=0, type="element", level="element", split="test") for i in range(2)]
    write_questions(tmp_path / "q.jsonl", questions)
    code, out, _ = _run(["gymqa", "stats", str(tmp_path / "q.jsonl")], capsys)
    assert code == 0 and "| classes | distinct answer names (labels unknown" in out
