"""Bridge data formats: the paper's Gym-QA JSON and free-form conversations, detected by content; their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge.conversations import ConversationSet, read_conversations
from bridge.datafile import detect_format, read_questions_file
from bridge.limits import TextLimits
from bridge.llm import PromptTemplate
from bridge.qa import read_question_set
from common.errors import DataError
from gymqa.paper_format import read_paper_json, write_paper_json
from gymqa.question import Question, write_questions

STEM = "What gymnastics move is this athlete performing?"


def _gymqa_questions(n: int = 3) -> list[Question]:
    return [Question(id=f"q{i}", clip_id=f"abc_E_000001_000009_A_000{i}_000{i + 1}", question=STEM,
                     options=("salto", "turn", "leap", "circle"), answer=i % 4, type="element", level="element")
            for i in range(n)]


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


CHAT = {"video": "clip0.mp4", "conversations": [
    {"from": "human", "value": "<video>\nWhat is the gymnast doing?"}, {"from": "gpt", "value": "a salto"},
    {"from": "human", "value": "Is it tucked?"}, {"from": "gpt", "value": "yes, tucked"}]}
MESSAGES = {"video": "clip1", "id": "m1", "messages": [
    {"role": "user", "content": "Describe the move."}, {"role": "assistant", "content": "a turn on one leg"}]}


# ------------------------------------------------------------------------------------------- format detection


def test_formats_are_detected_by_content_not_extension(tmp_path):
    questions = _gymqa_questions()
    write_questions(tmp_path / "ours.jsonl", questions)
    (tmp_path / "ours.txt").write_bytes((tmp_path / "ours.jsonl").read_bytes())
    write_paper_json(tmp_path / "paper.json", questions, missing_frame_length=10)
    (tmp_path / "paper.data").write_bytes((tmp_path / "paper.json").read_bytes())
    (tmp_path / "compact.jsonl").write_text(json.dumps(json.loads((tmp_path / "paper.json").read_text())))
    _jsonl(tmp_path / "chat.json", [CHAT, MESSAGES])
    assert [detect_format(tmp_path / n) for n in ("ours.jsonl", "ours.txt", "paper.json", "paper.data",
                                                  "compact.jsonl", "chat.json")] == \
        ["gymqa", "gymqa", "paper", "paper", "paper", "freeform"]


def test_paper_json_gives_the_questions_gymqa_import_gives(tmp_path):
    write_paper_json(tmp_path / "test.json", _gymqa_questions(), missing_frame_length=10)
    qs = read_question_set(tmp_path / "test.json", ["element"])
    assert qs.questions == read_paper_json(tmp_path / "test.json")
    assert [q.clip_id for q in qs.questions] == [q.clip_id for q in _gymqa_questions()]
    assert qs.lines == {"0000000": 2, "0000001": 11, "0000002": 20}
    with pytest.raises(DataError, match=r"test\.json:2: question of '0000000' is too long"):
        qs.check_lengths(TextLimits(question=2))


def test_paper_json_entry_errors_name_the_line(tmp_path):
    write_paper_json(tmp_path / "p.json", _gymqa_questions(), missing_frame_length=10)
    text = (tmp_path / "p.json").read_text().replace('"answer": "B"', '"answer": 7')
    (tmp_path / "p.json").write_text(text)
    with pytest.raises(DataError, match=r"p\.json:11: entry '0000001': answer 7 is not one of its 4 option"):
        read_question_set(tmp_path / "p.json", ["element"])
    (tmp_path / "nan.json").write_text('{\n "0000000": NaN\n}')
    with pytest.raises(DataError, match=r"nan\.json:2: invalid JSON: NaN is not a JSON number"):
        read_question_set(tmp_path / "nan.json", ["element"])


def test_real_paper_files_map_onto_finegym_clip_ids(shared_data):
    from common.clipid import clip_id
    from encoder.data.splits import read_samples

    for name, lst in (("all99_5", "gym99_train_element_v1.1.txt"), ("all288_5", "gym288_train_element_v1.1.txt")):
        path = shared_data / "sefar-gymqa" / name / "train.json"
        assert detect_format(path) == "paper"
        qs = read_question_set(path, ["element"])
        assert qs.questions == read_paper_json(path) and len(qs.lines) == len(qs.questions)
        labeled = {clip_id(s.path) for s in read_samples(shared_data / "sefar-gymqa" / name / "labeled.csv")}
        finegym = {clip_id(s.path) for s in read_samples(shared_data / "finegym" / lst)}
        assert qs.clip_ids <= labeled and qs.clip_ids <= finegym  # the cache keys of either list


# ------------------------------------------------------------------------------------------------- free-form


class _Tokenizer:
    eos_token = "</s>"


def test_every_assistant_turn_is_a_target_with_the_conversation_before_it(tmp_path):
    data = ConversationSet(read_conversations(_jsonl(tmp_path / "c.jsonl", [CHAT, MESSAGES])), "c.jsonl")
    assert [c.clip_id for c in data.conversations] == ["clip0", "clip1"] and data.clip_ids == {"clip0", "clip1"}
    assert data.conversations[0].turns[0]["content"] == "What is the gymnast doing?"  # the <video> is dropped
    assert [c.id for c in data.conversations] == ["line1", "m1"]
    examples = data.examples(PromptTemplate("vicuna_v1.1", _Tokenizer()))
    assert [(e.clip_id, e.target, e.text) for e in examples] == [
        ("clip0", " a salto</s>", "What is the gymnast doing?"), ("clip0", " yes, tucked</s>", "Is it tucked?"),
        ("clip1", " a turn on one leg</s>", "Describe the move.")]
    second = examples[1].prompt
    assert second.before.endswith("USER: ") and second.after == ("\nWhat is the gymnast doing? ASSISTANT: a salto</s>"
                                                                 "USER: Is it tucked? ASSISTANT:")
    with pytest.raises(DataError, match="free-form conversations have no options"):
        read_questions_file(tmp_path / "c.jsonl")


BAD = [
    ({"conversations": CHAT["conversations"]}, "'video' must be a clip id or a video path"),
    ({"video": 3, "conversations": CHAT["conversations"]}, "'video' must be"),
    ({"video": "a.mp4", "conversations": "hi"}, "'conversations' must be a non-empty list of turns"),
    ({"video": "a.mp4", "conversations": []}, "must be a non-empty list"),
    ({"video": "a.mp4", "conversations": [], "messages": []}, "needs one list of turns"),
    ({"video": "a.mp4", "conversations": ["hi"]}, "turn 1 must be an object, got str"),
    ({"video": "a.mp4", "conversations": [{"speaker": "me"}]}, "turn 1 needs 'from' and 'value'"),
    ({"video": "a.mp4", "conversations": [{"from": "human", "value": "q?"}]}, "no assistant turn"),
    ({"video": "a.mp4", "conversations": [{"from": "system", "value": "x"}]}, "turn 1 has unknown role 'system'"),
    ({"video": "a.mp4", "conversations": [{"from": "human", "value": 5}]}, "turn 1's text must be a string, got int"),
    ({"video": "a.mp4", "conversations": [{"from": "human", "value": "<video>"}, {"from": "gpt", "value": "x"}]},
     r"turn 1 \(user\) has no text"),
    ({"video": "a.mp4", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": " "}]},
     r"turn 2 \(assistant\) has no text"),
    ({"video": "a.mp4", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
     "turn 1 is a assistant turn where a user turn is due"),
    ({"video": "a.mp4", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
                                          {"from": "human", "value": "q2"}]}, "the last turn .3. is a user turn"),
    ({"video": "a.mp4", "id": 4, "conversations": CHAT["conversations"]}, "'id' must be a non-empty string"),
]


@pytest.mark.parametrize("record, problem", BAD, ids=[p[:24] for _, p in BAD])
def test_bad_records_are_one_error_naming_file_and_line(tmp_path, record, problem):
    path = _jsonl(tmp_path / "c.jsonl", [MESSAGES, record])
    with pytest.raises(DataError, match=problem) as err:
        read_conversations(path)
    assert str(err.value).startswith(f"{path}:2: ")


def test_bad_json_and_empty_files(tmp_path):
    (tmp_path / "nan.jsonl").write_text(json.dumps(MESSAGES) + '\n{"video": NaN}\n')
    with pytest.raises(DataError, match=r"nan\.jsonl:2: invalid JSON"):
        read_conversations(tmp_path / "nan.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        detect_format(tmp_path / "empty.jsonl")


def test_turns_over_the_length_limits_and_clips_without_features(tmp_path):
    long_answer = dict(MESSAGES, messages=[MESSAGES["messages"][0], {"role": "assistant", "content": "x" * 80}])
    path = _jsonl(tmp_path / "c.jsonl", [CHAT, long_answer])
    data = ConversationSet(read_conversations(path), str(path))
    data.check_lengths(TextLimits())
    with pytest.raises(DataError, match=r"c\.jsonl:2: turn 2 \(assistant\) is too long: 80 characters .* raise "
                                        r"data.max_question_tokens / data.max_option_tokens"):
        data.check_lengths(TextLimits(option=4))
    with pytest.raises(DataError, match=r"c\.jsonl:1: turn 1 \(user\) is too long"):
        data.check_lengths(TextLimits(question=1))

    class Cache:
        root, manifest = "cache", {"skipped": {"clip1": "no such file"}}

        def __contains__(self, key):
            return key == "clip0"

    with pytest.raises(DataError, match=r"c\.jsonl:2: clip 'clip1' \(video 'clip1'\) has no features in cache "
                                        r"\(unreadable: no such file\)"):
        data.check_features(Cache())
