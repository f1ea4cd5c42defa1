"""Gym-QA scoring: answer parsing, prediction formats, breakdowns, CircularEval, position bias."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from common.errors import DataError, ListFormatError
from gymqa.parse import normalize, parse_answer
from gymqa.question import Question
from gymqa.rotate import rotate, rotation_id
from gymqa.score import Prediction, read_predictions, resolve, score, score_files, write_predictions

OPTIONS = ("stag jump", "split jump", "split jump with 1 turn", "giant circle backward")


def make_questions(count: int, seed: int = 0, options: int = 4) -> list[Question]:
    rng = random.Random(seed)
    events = ["VT", "FX", "BB", "UB"]
    return [Question(id=f"q{i}", clip_id=f"c{i}", question="What?",
                     options=tuple(f"move {i} {k}" for k in range(options)), answer=i % options,
                     type="element" if i % 3 else "set", level="element" if i % 3 else "set",
                     event=events[i % 4], set_id=10 * (i % 4) + 1) for i in rng.sample(range(count), count)]


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, expected", [
    ("B", 1), ("b", 1), ("(B)", 1), ("B.", 1), ("B)", 1), ("Answer: B", 1), ("answer:b", 1), ("the answer is b", 1),
    ("The answer is (C).", 2), ("Best option:(D)", 3), ("Option A", 0), ("B. split jump", 1),
    ("(C) split jump with 1 turn", 2),
    ("I think (D) is right", 3), ("stag jump", 0), ("  Stag   Jump. ", 0), ("split jump with 1 turn", 2),
    ("The athlete performs a split jump with 1 turn.", 2), ("the answer is a split jump", 1),
    ("", None), ("   ", None), (None, None), ("E", None), ("Answer: E", None), ("A or B", None),
    ("I am not sure", None),
    ("None of the options", None), ("stag jump or giant circle backward", None),
])
def test_parse_answer(text: str | None, expected: int | None) -> None:
    assert parse_answer(text, OPTIONS) == expected


def test_normalize() -> None:
    assert normalize('  "Split   JUMP." ') == "split jump"


# --------------------------------------------------------------------------- resolving predictions


def test_resolve_kinds() -> None:
    q = Question("q", "c", "What?", OPTIONS, 1, "element", "element")
    assert resolve(Prediction("letter", "(b)"), q) == 1
    assert resolve(Prediction("text", "split jump"), q) == 1
    assert resolve(Prediction("index", 3), q) == 3
    assert resolve(Prediction("loglikelihoods", [-3.0, -0.5, -2, -9]), q) == 1
    assert resolve(Prediction("loglikelihoods", [-1.0, -1.0, -2, -9]), q) is None  # a tie is no answer
    assert resolve(Prediction("loglikelihoods", [-1.0, float("nan"), -2, -9]), q) is None
    assert resolve(Prediction("index", None), q) is None and resolve(None, q) is None
    for bad in (Prediction("index", 4, "p.jsonl", 3), Prediction("loglikelihoods", [0.1, 0.2], "p.jsonl", 3),
                Prediction("text", 5, "p.jsonl", 3)):
        with pytest.raises(DataError, match=r"^p.jsonl:3: "):
            resolve(bad, q)


# --------------------------------------------------------------------------- scoring


def test_perfect_and_breakdowns() -> None:
    questions = make_questions(120)
    report = score(questions, {q.id: Prediction("index", q.answer) for q in questions})
    assert report.overall.accuracy == 1.0 and report.answered == 120 and report.missing == 0
    assert set(report.by_type) == {"element", "set"} and report.by_type["set"].n == 40
    assert set(report.by_event) == {"BB", "FX", "UB", "VT"} and set(report.by_set) == {"1", "11", "21", "31"}
    assert report.circular is None
    assert all(row["accuracy"] == 1.0 and row["gold"] == 30 for row in report.letters.values())


def test_random_predictions_score_about_one_in_n() -> None:
    for options in (2, 4, 5):
        questions = make_questions(6000, options=options)
        rng = random.Random(7)
        report = score(questions, {q.id: Prediction("index", rng.randrange(options)) for q in questions})
        assert abs(report.overall.accuracy - 1 / options) < 0.025


def test_missing_empty_and_unparseable_are_wrong() -> None:
    questions = make_questions(4)
    by_answer = {q.answer: q for q in questions}
    predictions = {by_answer[0].id: Prediction("text", ""), by_answer[1].id: Prediction("text", "no idea"),
                   by_answer[2].id: Prediction("letter", "C"), "stray": Prediction("letter", "A")}
    report = score(questions, predictions)
    assert (report.overall.correct, report.overall.n) == (1, 4)
    assert (report.answered, report.unparsed, report.missing, report.unknown_ids) == (1, 2, 1, 1)


def test_position_bias_of_an_always_a_model() -> None:
    questions = make_questions(400)
    report = score(questions, {q.id: Prediction("letter", "A") for q in questions})
    assert report.letters["A"] == {"gold": 100, "predicted": 400, "frequency": 1.0, "accuracy": 1.0}
    assert report.letters["B"]["predicted"] == 0 and report.letters["B"]["accuracy"] == 0.0
    assert report.overall.accuracy == 0.25


def test_rotations() -> None:
    questions = make_questions(5)
    rotated = rotate(questions)
    assert len(rotated) == 20 and rotated[0] == questions[0]
    first = rotated[1]
    assert first.id == rotation_id(questions[0].id, 1) == f"{questions[0].id}@r1" and first.base_id == questions[0].id
    assert first.options == questions[0].options[1:] + questions[0].options[:1]
    assert all(r.answer_text == next(q for q in questions if q.id == r.base_id).answer_text for r in rotated)
    assert len(rotate(questions, 2)) == 10
    with pytest.raises(ValueError, match="already rotation"):
        rotate(rotated)
    with pytest.raises(ValueError, match="cannot make 5 rotations"):
        rotate(questions, 5)


def test_circular_eval() -> None:
    questions = rotate(make_questions(300))
    rng = random.Random(1)
    # an always-"A" model: 25% plain, 0% circular; a perfect model 100% both; random: circular <= plain
    always_a = score(questions, {q.id: Prediction("letter", "A") for q in questions})
    assert always_a.overall.accuracy == 0.25 and always_a.circular["accuracy"] == 0.0
    perfect = score(questions, {q.id: Prediction("index", q.answer) for q in questions})
    assert perfect.circular == {"items": 300, "rotations": 4, "correct": 300, "accuracy": 1.0}
    noisy = score(questions, {q.id: Prediction("index", q.answer if rng.random() < 0.7 else 0) for q in questions})
    assert noisy.circular["accuracy"] <= noisy.overall.accuracy
    assert noisy.overall.n == 300  # plain accuracy counts the originals only
    with pytest.raises(ValueError, match="has rotations"):
        score([q for q in questions if q.rotation != 2], {})


def test_markdown_and_json(tmp_path: Path) -> None:
    questions = rotate(make_questions(8))
    report = score(questions, {q.id: Prediction("index", q.answer) for q in questions})
    report.write(tmp_path / "r.json", tmp_path / "r.md")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["overall"] == {"n": 8, "correct": 8, "accuracy": 1.0} and data["circular"]["items"] == 8
    markdown = (tmp_path / "r.md").read_text()
    assert "| overall | all | 8 | 8 | 100.00% |" in markdown and "CircularEval" in markdown


# --------------------------------------------------------------------------- prediction files


def test_read_predictions_jsonl_and_json(tmp_path: Path) -> None:
    jsonl = write_predictions(tmp_path / "p.jsonl", {"a": "B", "b": "split jump"})
    assert read_predictions(jsonl) == {"a": Prediction("text", "B", str(jsonl), 1),
                                       "b": Prediction("text", "split jump", str(jsonl), 2)}
    single = tmp_path / "one.jsonl"
    single.write_text('{"id": "a", "model": "m", "loglikelihoods": [0, 1]}\n')  # extra keys are ignored
    assert read_predictions(single)["a"].kind == "loglikelihoods"
    as_dict = tmp_path / "p.json"
    as_dict.write_text(json.dumps({"a": "B", "b": 2, "c": [0.1, 0.2]}))
    kinds = {k: p.kind for k, p in read_predictions(as_dict).items()}
    assert kinds == {"a": "text", "b": "index", "c": "loglikelihoods"}
    as_dict.write_text(json.dumps({"a": "B"}, indent=2))
    assert read_predictions(as_dict) == {"a": Prediction("text", "B", f"{as_dict} (id a)")}
    (tmp_path / "empty.jsonl").write_text("\n")
    assert read_predictions(tmp_path / "empty.jsonl") == {}
    for bad, reason in (("[1, 2]", "expected JSONL records"), ('{"a": {"b": 1}}', "must be a string, an integer")):
        as_dict.write_text(bad)
        with pytest.raises(ListFormatError, match=reason):
            read_predictions(as_dict)


@pytest.mark.parametrize("text, line, reason", [
    ('{"id": "a", "letter": "B"}\n{"id": "a", "letter": "C"}\n', 2, "repeats line 1"),
    ('{"id": "a", "letter": "B", "index": 1}\n', 1, "exactly one of"),
    ('{"id": 3, "letter": "B"}\n', 1, "string 'id'"),
    ('{"id": "a", "letter": "B"}\n[1]\n', 2, "JSON object"),
    ('{"id": "a", "letter": "B"}\n{oops\n', 2, "invalid JSON"),
])
def test_read_predictions_errors(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(text)
    with pytest.raises(ListFormatError, match=reason) as info:
        read_predictions(path)
    assert info.value.line == line


def test_score_files(tmp_path: Path) -> None:
    from gymqa.question import write_questions

    questions = make_questions(20)
    write_questions(tmp_path / "q.jsonl", questions)
    write_predictions(tmp_path / "p.jsonl", {q.id: "ABCD"[q.answer] for q in questions[:10]}, kind="letter")
    report = score_files(tmp_path / "q.jsonl", tmp_path / "p.jsonl")
    assert (report.overall.correct, report.missing) == (10, 10)
