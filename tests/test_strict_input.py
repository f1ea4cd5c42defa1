"""Strict JSON everywhere and checked FineGym / paper-format content (the non-bridge, non-demo cases of
"Hardening II"): NaN, infinities, numbers beyond float range, wrongly typed or impossible values are one
``error: <file>[:<line>]: <problem>`` line from the CLI, never a traceback, never written into an output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from common import jsonio
from common.errors import DataError, ListFormatError
from common.finegym import read_annotations
from gymqa.paper_format import read_paper_json
from test_bad_input import _one_error_line, _run
from test_gymqa_build import mini_clip, write_mini_finegym

BIG_400 = "9" * 400
BIG_5000 = "7" * 5000


# ------------------------------------------------------------------------------------------ the strict reader

NON_JSON_NUMBERS = [
    ("NaN", "NaN is not a JSON number"),
    ("Infinity", "Infinity is not a JSON number"),
    ("-Infinity", "-Infinity is not a JSON number"),
    ("1e999", "number 1e999 is out of range"),
    ("-1.5e400", "number -1.5e400 is out of range"),
    (BIG_400, "(400 digits) is out of range"),
    ("-" + BIG_5000, "(5000 digits) is out of range"),
]


@pytest.mark.parametrize("token, reason", NON_JSON_NUMBERS)
def test_strict_reader_refuses_non_finite_and_out_of_range_numbers(tmp_path, token, reason):
    whole = tmp_path / "whole.json"
    whole.write_text('{\n  "a": "NaN 1e999",\n  "b": [1, 2.5],\n  "c": ' + token + "\n}\n")
    with pytest.raises(ListFormatError, match=r"whole\.json:4: invalid JSON: .*" + _re(reason)):
        jsonio.read_json(whole)
    lines = tmp_path / "lines.jsonl"
    lines.write_text('{"x": 1}\n\n{"x": ' + token + "}\n")
    with pytest.raises(ListFormatError, match=r"lines\.jsonl:3: invalid JSON: .*" + _re(reason)):
        jsonio.read_jsonl(lines)


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_strict_reader_keeps_valid_numbers_exactly(tmp_path):
    big_ok = "1" + "0" * 300  # 301 digits: still within float range
    path = tmp_path / "ok.json"
    path.write_text(f'{{"i": -12, "f": 1e308, "z": -0.0, "big": {big_ok}, "s": "NaN"}}')
    assert jsonio.read_json(path) == {"i": -12, "f": 1e308, "z": -0.0, "big": int(big_ok), "s": "NaN"}
    assert jsonio.read_json_object(path)["i"] == -12
    with pytest.raises(ListFormatError, match="expected a JSON object"):
        path.write_text("[1]")
        jsonio.read_json_object(path)
    with pytest.raises(ListFormatError, match="missing: because"):
        jsonio.read_json_object(tmp_path / "absent.json", "missing: because")


def test_strict_writer_refuses_nan_and_leaves_the_old_file(tmp_path):
    path = jsonio.write_json(tmp_path / "out.json", {"a": 1})
    for bad in (math.nan, math.inf, -math.inf, [1.0, math.nan]):
        with pytest.raises(ValueError):
            jsonio.write_json(path, {"a": bad})
        with pytest.raises(ValueError):
            jsonio.write_jsonl(tmp_path / "out.jsonl", [{"a": bad}])
    assert json.loads(path.read_text()) == {"a": 1}
    assert not (tmp_path / "out.jsonl").exists() and not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------ predictions


def _questions(path: Path) -> Path:
    from gymqa.question import Question, write_questions

    write_questions(path, [Question(id=f"q{i}", clip_id=f"c{i}", question="What?", options=("a", "b", "c", "d"),
                                    answer=i % 4, type="element", level="element") for i in range(3)])
    return path


@pytest.mark.parametrize("layout", ["jsonl", "object"])
@pytest.mark.parametrize("number, reason", [
    (BIG_400, "(400 digits) is out of range"), (BIG_5000, "(5000 digits) is out of range"),
    ("NaN", "NaN is not a JSON number"), ("1e999", "number 1e999 is out of range"),
])
def test_prediction_numbers_beyond_float_range_are_one_error(tmp_path, capsys, layout, number, reason):
    questions = _questions(tmp_path / "q.jsonl")
    predictions = tmp_path / "p.jsonl"
    values = f"[0.5, {number}, -1, 2]"
    if layout == "jsonl":
        predictions.write_text('{"id": "q0", "letter": "A"}\n{"id": "q1", "loglikelihoods": ' + values + "}\n")
    else:
        predictions.write_text('{"q0": "A",\n "q1": ' + values + "}\n")
    report = tmp_path / "score.json"
    code, out, err = _run(["gymqa", "score", str(questions), str(predictions), "--out", str(report)], capsys)
    line = _one_error_line(err)
    assert code == 2 and not out and not report.exists()
    assert line.startswith(f"error: {predictions}:2: invalid JSON: ") and reason in line


# ------------------------------------------------------------------------------------------ FineGym annotations


def _annotation(event_span=(1000.5, 1090.0), times=((2.25, 3.75),), stages=None) -> tuple[str, dict]:
    clip = mini_clip(2, 1000)  # y_02-1000ab_E_001000_001090_A_0002_0004
    youtube, rest = clip.split("_E_")
    element = {"stages": len(times) if stages is None else stages, "timestamps": [list(t) for t in times]}
    return clip, {youtube: {f"E_{rest[:13]}": {"event": 2, "timestamps": [list(event_span)],
                                               "segments": {rest[14:]: element}}}}


def _build_argv(mini: dict[str, Path], annotations: Path, out: Path) -> list[str]:
    return ["gymqa", "build", "--categories", str(mini["categories"]), "--train", str(mini["train"]), "--val",
            str(mini["val"]), "--annotations", str(annotations), "--out", str(out)]


@pytest.mark.parametrize("replace, token, reason", [
    ("2.25", "NaN", "NaN is not a JSON number"),
    ("3.75", "Infinity", "Infinity is not a JSON number"),
    ("1000.5", "1e999", "number 1e999 is out of range"),
    ("1090.0", BIG_400, "(400 digits) is out of range"),
    ("3.75", BIG_5000, "(5000 digits) is out of range"),
])
def test_annotation_numbers_that_are_not_finite_are_one_error(tmp_path, capsys, replace, token, reason):
    mini = write_mini_finegym(tmp_path / "finegym")
    _, annotation = _annotation()
    text = json.dumps(annotation, indent=1)
    assert replace in text
    path = tmp_path / "annotation.json"
    path.write_text(text.replace(replace, token, 1))
    line_number = text[: text.index(replace)].count("\n") + 1
    out = tmp_path / "out"
    code, _, err = _run(_build_argv(mini, path, out), capsys)
    line = _one_error_line(err)
    assert code == 2 and line.startswith(f"error: {path}:{line_number}: invalid JSON: ") and reason in line
    assert not out.exists()
    with pytest.raises(ListFormatError, match="invalid JSON"):
        read_annotations(path)


@pytest.mark.parametrize("kwargs, reason", [
    ({"times": ((-1.0, 3.75),)}, "pair 1 [-1.0, 3.75] has a negative time"),
    ({"event_span": (-5.0, 1090.0)}, "has a negative time"),
    ({"times": ((2.25, 95.0),)}, "element time 2.25..95 s (relative to the event start) lies outside its event, "
                                 "which is 89.5 s long"),
    ({"times": ((2.25, 3.75),), "stages": 3}, "'stages' is 3 but 'timestamps' has 1 [start, end] pair(s)"),
    ({"times": ((2.0, 2.5), (2.5, 3.0), (3.0, 3.75)), "stages": 1}, "'stages' is 1 but 'timestamps' has 3"),
    ({"times": ((3.0, 3.75), (2.0, 2.5))}, "pair 2 starts before pair 1"),
])
def test_annotation_times_that_cannot_be_are_one_error(tmp_path, capsys, kwargs, reason):
    mini = write_mini_finegym(tmp_path / "finegym")
    _, annotation = _annotation(**kwargs)
    path = tmp_path / "annotation.json"
    path.write_text(json.dumps(annotation))
    with pytest.raises(ListFormatError, match=_re(reason)):
        read_annotations(path)
    out = tmp_path / "out"
    code, _, err = _run(_build_argv(mini, path, out), capsys)
    assert code == 2 and reason in _one_error_line(err) and not out.exists()
    videos = tmp_path / "videos"
    videos.mkdir()
    code, _, err = _run(["data", "prepare", "finegym", "--videos", str(videos), "--annotations", str(path),
                         "--out", str(tmp_path / "prepared")], capsys)
    assert code == 2 and reason in _one_error_line(err) and not (tmp_path / "prepared").exists()


@pytest.mark.parametrize("code", [True, 2.0, "2", 0])
def test_annotation_event_codes_must_be_integers(tmp_path, code):
    _, annotation = _annotation()
    next(iter(next(iter(annotation.values())).values()))["event"] = code
    path = tmp_path / "annotation.json"
    path.write_text(json.dumps(annotation))
    with pytest.raises(ListFormatError, match="'event' must be one of"):
        read_annotations(path)


def test_valid_annotations_still_build_times(tmp_path):
    vault = {"y": {"E_000010_000050": {"event": 1, "timestamps": [[10.2, 50.7]], "segments": {
        "A_0003_0008": {"stages": 3, "timestamps": [[3.1, 4.0], [4.0, 6.2], [6.2, 8.9]]},
        "A_0039_0041": {"stages": 1, "timestamps": [[39.5, 41.2]]}}}}}  # ends 0.7 s after the event: rounding
    path = tmp_path / "a.json"
    path.write_text(json.dumps(vault))
    elements = read_annotations(path)
    assert [(e.stages, e.start, e.end) for e in elements] == [(3, 3.1, 8.9), (1, 39.5, 41.2)]


# ------------------------------------------------------------------------------------------ paper format

PAPER_ENTRY = {"answer": "B", "question": "What gymnastics move is this athlete performing? A.split jump "
               "B.stag jump C.salto backward tucked D.giant circle backward", "answer_type": "what",
               "question_id": "0000001", "dataset": "finegym", "video": "abc_E_000001_000030_A_0001_0002",
               "frame_length": 21}


@pytest.mark.parametrize("field, value, reason", [
    ("question", None, "entry '0000001': question must be a string, got None"),
    ("question", 7, "entry '0000001': question must be a string, got 7"),
    ("answer_type", ["what"], "entry '0000001': answer_type must be a string, got ['what']"),
    ("video", {"id": "x"}, "entry '0000001': video must be a string, got {'id': 'x'}"),
    ("video", 12345, "entry '0000001': video must be a string, got 12345"),
    ("video", "", "entry '0000001': video must be a clip id"),
    ("dataset", None, "entry '0000001': dataset must be a string"),
    ("question", "What gymnastics move is this athlete performing? A. B. C. D.",
     "entry '0000001': option A, B, C, D has no text"),
    ("question", "What? A.split jump B.  C.stag jump D.giant circle", "entry '0000001': option B has no text"),
    ("answer", "", "entry '0000001': answer '' is not one of its 4 option letters"),
    ("answer", "BC", "entry '0000001': answer 'BC' is not one of its 4 option letters"),
])
def test_paper_entries_of_the_wrong_type_are_one_error(tmp_path, capsys, field, value, reason):
    first = {**PAPER_ENTRY, "question_id": "0000000", "answer": "A"}
    data = {"0000000": first, "0000001": {**PAPER_ENTRY, field: value}}
    path = tmp_path / "test.json"
    path.write_text(json.dumps(data, indent=4))
    with pytest.raises(ListFormatError, match=_re(reason)) as info:
        read_paper_json(path)
    assert info.value.line == 11  # where the entry starts
    predictions = tmp_path / "p.jsonl"
    predictions.write_text('{"id": "0000000", "letter": "A"}\n')
    for argv in (["gymqa", "score", str(path), str(predictions)], ["gymqa", "stats", str(path)],
                 ["gymqa", "import", str(path), str(tmp_path / "q.jsonl")]):
        code, out, err = _run(argv, capsys)
        assert code == 2 and _one_error_line(err).startswith(f"error: {path}:11: {reason}"), (argv, err)
    assert not (tmp_path / "q.jsonl").exists()


def test_paper_file_with_nan_frame_length_is_one_error(tmp_path, capsys):
    text = json.dumps({"0000001": PAPER_ENTRY}, indent=4).replace('"frame_length": 21', '"frame_length": NaN')
    path = tmp_path / "test.json"
    path.write_text(text)
    code, _, err = _run(["gymqa", "stats", str(path)], capsys)
    assert code == 2 and _one_error_line(err) == f"error: {path}:9: invalid JSON: NaN is not a JSON number (NaN and " \
                                                 "infinities are not allowed)"


def test_real_paper_files_are_still_read(shared_data):
    for name, count in (("all99_5", 1316), ("all288_5", 1466)):
        questions = read_paper_json(shared_data / "sefar-gymqa" / name / "train.json")
        assert len(questions) == count and all(len(q.options) == 4 and all(o.strip() for o in q.options)
                                               for q in questions)


def test_data_error_is_the_base_of_every_reader_error():
    assert issubclass(ListFormatError, DataError)
