"""Training on one's own conversations (and on the paper's Gym-QA JSON), then chatting with the adapter."""

from __future__ import annotations

import json
import math

import pytest
from bridge_fixtures import tiny_llama
from test_bridge_train import _questions
from test_export import exported, fake_run  # noqa: F401 (fixtures)

from bridge.chat import VideoChat
from bridge.config import load_config
from bridge.export import export_run, read_adapter_config
from bridge.train import train
from gymqa.paper_format import write_paper_json
from gymqa.question import read_questions_jsonl

RECORDS = [
    {"video": "clip0.mp4", "conversations": [
        {"from": "human", "value": "<video>\nWhat is the gymnast doing?"}, {"from": "gpt", "value": "a salto backward"},
        {"from": "human", "value": "Is it tucked?"}, {"from": "gpt", "value": "yes, tucked"}]},
    {"video": "clip1", "messages": [
        {"role": "user", "content": "Describe the move."}, {"role": "assistant", "content": "a turn on one leg"}]},
    {"video": "clip2.mp4", "conversations": [
        {"from": "human", "value": "what move is this"}, {"from": "gpt", "value": "a handstand"}]},
]


@pytest.fixture(scope="module")
def base(exported, fake_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("freeform")
    data = fake_run.parent / "data"
    overrides = [
        "encoder.kind=sefar", f"encoder.export={exported}", "encoder.feature_dtype=float32",
        f"data.videos={data / 'videos'}", "adapter.num_layers=1", "adapter.num_queries=4", "adapter.max_frames=8",
        f"llm.path={tiny_llama(root / 'llama')}", "train.steps=2", "train.batch_size=2", "train.save_every=2",
        "train.log_every=1", "train.warmup_steps=1",
    ]
    return root, data, overrides


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_free_form_adapter_trains_exports_and_chats(base, exported, capsys):
    root, data, overrides = base
    chats = _write(root / "chats.json", RECORDS)  # JSONL content under a .json name: told by content
    run = root / "run"
    summary = train(load_config(None, [*overrides, f"out={run}", f"data.train_questions={chats}",
                                       "data.train_list=/nonexistent/list.txt", f"data.features={root / 'features'}"]))
    assert summary["step"] == 2 and all(map(math.isfinite, summary["losses"]))
    assert summary["train_questions"] == 3 and summary["train_examples"] == 4
    assert (root / "features" / "train_clips.txt").read_text().split("\n")[:3] == ["clip0.mp4 0", "clip1 0",
                                                                                    "clip2.mp4 0"]
    prompt = (run / "prompt.txt").read_text()
    assert "USER: <video>\nWhat is the gymnast doing? ASSISTANT: a salto backward" in prompt  # the first target
    from bridge.dryrun import dry_run

    report, _ = dry_run(load_config(None, [*overrides, f"data.train_questions={chats}"]), 1)
    assert "data.train_questions" in report and "data.train_list" not in report  # derived from the records
    config = read_adapter_config(run / "adapter")
    assert config["prompt"] == {"question": "What is the gymnast doing?", "objective": "conversation"}
    export = export_run(run, root / "export")
    chat = VideoChat.load(exported, export, None)
    clip = chat.encode(data / "videos" / "clip2.mp4")
    history = [{"role": "user", "content": "What is the gymnast doing?"}, {"role": "assistant", "content": "a salto"}]
    pieces = list(chat.stream(clip, history, "Is it tucked?", max_new_tokens=4))
    assert pieces and all(isinstance(p, str) for p in pieces)


def test_train_and_eval_take_the_papers_gymqa_json(base, capsys):
    from sefar.cli import main

    root, data, overrides = base
    questions = read_questions_jsonl(_questions(root / "train.jsonl", "train"))
    paper = write_paper_json(root / "paper_train.json", questions, missing_frame_length=12)
    summary = train(load_config(None, [*overrides, f"out={root / 'paper'}", f"data.train_questions={paper}",
                                       f"data.train_list={data / 'val.txt'}", f"data.test_list={data / 'val.txt'}",
                                       f"data.features={root / 'pfeatures'}"]))
    assert summary["train_questions"] == 6 and summary["train_examples"] == 6 and summary["step"] == 2
    assert "USER: <video>\nWhat gymnastics move" in (root / "paper" / "prompt.txt").read_text()
    test = write_paper_json(root / "paper_test.data", questions, missing_frame_length=12)  # any name
    assert main(["bridge", "eval", str(root / "paper"), "--questions", str(test), "--method", "letter",
                 "--max-questions", "2", "--no-circular", "--out", str(root / "paper_eval")]) == 0
    assert "| paper | letter | 2 |" in capsys.readouterr().out


def test_cli_reports_a_bad_record_as_one_error_line(base, capsys):
    from sefar.cli import main

    root, _, overrides = base
    bad = _write(root / "bad.jsonl", [RECORDS[1], {"video": "clip1", "messages": [{"role": "user", "content": "q"}]}])
    assert main(["bridge", "train", "-", *overrides, f"out={root / 'bad'}", f"data.train_questions={bad}"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}:2: no assistant turn: nothing to train on"
    missing = _write(root / "missing.jsonl", [RECORDS[1], {**RECORDS[1], "video": "nope.mp4"}])
    assert main(["bridge", "train", "-", *overrides, f"out={root / 'missing'}", f"data.train_questions={missing}",
                 f"data.features={root / 'mfeatures'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {missing}:2: clip 'nope' (video 'nope.mp4') has no features in ") and \
        "unreadable" in err
