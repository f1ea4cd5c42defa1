"""The SeFAR paper's Gym-QA JSON (export/import, exact round trip) and question-set statistics."""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path

import pytest

from common.errors import ConfigError, ListFormatError
from common.finegym import read_categories, read_element_list
from gymqa.io import gc_paused
from gymqa.paper_format import read_frame_lengths, read_paper_json, split_prompt, to_paper_dict, write_paper_json
from gymqa.question import Question, question_from_record, read_questions_jsonl, write_questions
from gymqa.rotate import rotate
from gymqa.score import Prediction, score
from gymqa.stats import question_stats, read_question_set, read_questions, stats_markdown

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SEFAR = DATA / "sefar-gymqa"
needs_data = pytest.mark.skipif(
    not SEFAR.is_dir() or not (DATA / "finegym").is_dir(),
    reason="the paper's Gym-QA files / FineGym lists not found at ../shared/data beside the checkout",
)
STEM = "What gymnastics move is this athlete performing?"


def _question(i: int, answer: int = 0, **fields: object) -> Question:
    return Question(id=f"x{i}", clip_id=f"yt{i}_E_000001_000009_A_0001_0002", question=STEM,
                    options=("split jump", "stag jump", "round-off, flic-flac on, stretched salto backward off",
                             "salto B. tucked"),
                    answer=answer, type="element", level="element", **fields)


def test_split_prompt() -> None:
    stem, options = split_prompt(f"{STEM} A.split jump B.stag jump C.round-off, flic-flac on D.salto backward")
    assert stem == STEM and options == ["split jump", "stag jump", "round-off, flic-flac on", "salto backward"]
    with pytest.raises(ValueError, match="no ' A.'"):
        split_prompt("What is it? (A) split jump")


def test_export_import_round_trip(tmp_path: Path) -> None:
    questions = [_question(i, answer=i % 4, frame_length=10 + i) for i in range(4)]
    path = write_paper_json(tmp_path / "test.json", questions)
    data = json.loads(path.read_text())
    assert list(data) == ["0000000", "0000001", "0000002", "0000003"]
    assert data["0000001"] == {
        "answer": "B", "answer_type": "what", "question_id": "0000001", "dataset": "finegym",
        "video": questions[1].clip_id, "frame_length": 11,
        "question": f"{STEM} A.split jump B.stag jump C.round-off, flic-flac on, stretched salto backward off "
                    "D.salto B. tucked",
    }
    back = read_paper_json(path)
    assert [(q.options, q.answer, q.frame_length, q.split) for q in back] == [
        (q.options, q.answer, q.frame_length, "test") for q in questions]
    assert not path.read_text().endswith("\n")


def test_frame_lengths_are_required_or_looked_up(tmp_path: Path) -> None:
    questions = [_question(0), _question(1)]
    with pytest.raises(ConfigError, match="2 questions have no frame length"):
        to_paper_dict(questions)
    lengths = tmp_path / "frames.txt"
    lengths.write_text(f"/videos/{questions[0].clip_id}.mp4 33\r\n\r\n{questions[1].clip_id} 7\r\n")
    table = read_frame_lengths(lengths)
    assert [entry["frame_length"] for entry in to_paper_dict(questions, table).values()] == [33, 7]
    assert [e["frame_length"] for e in to_paper_dict(questions, missing_frame_length=0).values()] == [0, 0]
    lengths.write_text("clip 3 4\n")
    with pytest.raises(ListFormatError, match="expected '<clip id> <frames>'"):
        read_frame_lengths(lengths)


def test_rotated_ids_survive_the_paper_format(tmp_path: Path) -> None:
    questions = rotate([_question(0, answer=2, frame_length=5)])
    path = write_paper_json(tmp_path / "rot.json", questions, renumber=False)
    back = read_paper_json(path)
    expected = [(k, "x0", questions[0].answer_text) for k in range(4)]
    assert [(q.rotation, q.base_id, q.answer_text) for q in back] == expected


@pytest.mark.parametrize("mutate, reason", [
    (lambda e: e.pop("video"), "needs the keys"),
    (lambda e: e.update(question_id="0000009"), "has question_id"),
    (lambda e: e.update(answer_type="why"), "unknown answer_type"),
    (lambda e: e.update(answer="E"), "not one of its 4 option letters"),
    (lambda e: e.update(question="no options here"), "no ' A.' option marker"),
    (lambda e: e.update(frame_length=-1), "frame_length"),
])
def test_import_rejects_malformed_entries(tmp_path: Path, mutate, reason: str) -> None:
    data = to_paper_dict([_question(0, frame_length=3)])
    mutate(data["0000000"])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ListFormatError, match=reason):
        read_paper_json(path)


def test_stats_counts_duplicates_and_uncovered_classes(tmp_path: Path) -> None:
    duplicate = Question("d", "c", STEM, ("a", "a", "b", "c"), 0, "element", "element", clabel=1, split="test")
    train = [_question(0, clabel=0, split="train", event="FX")]
    test = [_question(1, answer=1, clabel=0, event="FX"), duplicate]
    stats = question_stats(train + test)
    assert stats["duplicate_options"] == 1 and stats["classes"] == 2 and stats["classes_without_train"] == ["1"]
    assert stats["by_split"] == {"test": 2, "train": 1} and stats["by_letter"] == {"A": 2, "B": 1}
    assert stats["by_event"] == {"FX": 2, "unknown": 1}
    assert question_stats(test)["classes_without_train"] is None  # no train split loaded
    assert "| duplicate options | - | 1 |" in stats_markdown(stats)
    write_questions(tmp_path / "train.jsonl", train)
    write_questions(tmp_path / "test.jsonl", test)
    assert read_question_set(tmp_path) == train + test
    assert read_question_set(tmp_path / "test.jsonl") == test
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no train.jsonl"):
        read_question_set(tmp_path / "empty")


def test_record_covers_every_field() -> None:
    question = _question(0, answer=2, event="FX", set_id=21, clabel=4, glabel=12, split="train", strategy="random",
                         seed=3, frame_length=9, times=(1.5, 2.0))
    record = question.to_record()
    renamed = {"set_id": "set"}
    assert {renamed.get(f.name, f.name) for f in dataclasses.fields(Question)} | {"answer_letter"} == set(record)
    assert question_from_record(json.loads(json.dumps(record))) == question


def test_gc_paused_restores_the_collector() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still holds
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_jsonl_reader_errors(tmp_path: Path) -> None:
    good = _question(0).to_record()
    cases = [({**good, "answer": 7}, "not an index"), ({**good, "answer_letter": "C"}, "disagrees"),
             ({**good, "type": "why"}, "'type' must be one of"), ({**good, "options": ["x"]}, "'options' must hold"),
             ({**good, "clabel": "3"}, "'clabel' must be int"), ({**good, "split": "dev"}, "'split' must be one of")]
    for record, reason in cases:
        path = tmp_path / "q.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps({**record, "id": "other"}) + "\n")
        with pytest.raises(ListFormatError, match=reason) as info:
            read_questions_jsonl(path)
        assert info.value.line == 2
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(ListFormatError, match="repeats line 1"):
        read_questions_jsonl(path)


# --------------------------------------------------------------------------- the paper's real files


@needs_data
@pytest.mark.parametrize("classes, count, duplicates", [("99", 1316, 15), ("288", 1466, 8)])
def test_real_paper_files_round_trip_exactly(tmp_path: Path, classes: str, count: int, duplicates: int) -> None:
    original = SEFAR / f"all{classes}_5" / "train.json"
    questions = read_paper_json(original)
    assert len(questions) == count and {q.split for q in questions} == {"train"}
    assert sum(len(set(q.options)) < 4 for q in questions) == duplicates  # the known flaw of the paper's files
    copy = write_paper_json(tmp_path / "train.json", questions)
    assert copy.read_bytes() == original.read_bytes()
    write_questions(tmp_path / "ours.jsonl", questions)
    again = write_paper_json(tmp_path / "again.json", read_questions_jsonl(tmp_path / "ours.jsonl"))
    assert again.read_bytes() == original.read_bytes()


@needs_data
def test_real_paper_file_categories_and_scoring() -> None:
    finegym = DATA / "finegym"
    categories = read_categories(finegym / "gym99_categories.txt")
    by_text = read_paper_json(SEFAR / "all99_5" / "train.json", categories)
    assert 0 < sum(q.event is None for q in by_text) < 300  # names shared by two events stay unresolved
    labels = dict(read_element_list(finegym / "gym99_train_element_v1.1.txt"))
    questions = read_questions(SEFAR / "all99_5" / "train.json", categories, labels)
    assert all(q.event is not None and categories[q.clabel].name == q.answer_text for q in questions)
    report = score(questions, {q.id: Prediction("letter", q.answer_letter) for q in questions})
    assert report.overall.accuracy == 1.0 and set(report.by_event) == {"VT", "FX", "BB", "UB"}
    stats = question_stats(questions, categories)
    assert stats["classes"] == 99 and stats["classes_without_train"] == []
