"""The bridge recipe end to end on tiny artifacts: features, training, kill + resume, export, every scoring method."""

from __future__ import annotations

import json
import math

import pytest
import torch
from bridge_fixtures import tiny_llama
from test_export import CLASS_NAMES, LABELS, exported, fake_run  # noqa: F401 (fixtures)

from bridge.adapter import QFormerAdapter
from bridge.config import load_config
from bridge.export import TOKENIZER_DIR, export_run, read_adapter_config
from bridge.run import evaluate_run
from bridge.train import train
from common.errors import ConfigError, DataError
from gymqa.question import Question, write_questions
from gymqa.score import score_files


def _questions(path, split, missing_clip: bool = False):
    qs = []
    for i, label in enumerate(LABELS):
        options = [CLASS_NAMES[(label + k) % len(CLASS_NAMES)] for k in range(4)]
        answer = i % 4
        options[0], options[answer] = options[answer], options[0]
        qs.append(Question(id=f"{split}-{i}", clip_id=f"clip{i}", question="What gymnastics move is this athlete "
                           "performing?", options=tuple(options), answer=answer, type="element", level="element",
                           split=split))
    if missing_clip:  # a clip that is in no list: its question is skipped and counted, not an error
        qs.append(Question(id=f"{split}-missing", clip_id="clip99", question="What move?", options=("a", "b"),
                           answer=0, type="element", level="element", split=split))
    write_questions(path, qs)
    return path


@pytest.fixture(scope="module")
def setup(exported, fake_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("bridge")
    data = fake_run.parent / "data"
    llama = tiny_llama(root / "llama")
    overrides = [
        "encoder.kind=sefar", f"encoder.export={exported}", "encoder.feature_dtype=float32",
        f"data.train_questions={_questions(root / 'train.jsonl', 'train')}",
        f"data.test_questions={_questions(root / 'test.jsonl', 'test', missing_clip=True)}",
        f"data.train_list={data / 'val.txt'}", f"data.test_list={data / 'val.txt'}", f"data.videos={data / 'videos'}",
        f"data.features={root / 'features'}", "adapter.num_layers=1", "adapter.num_queries=4", "adapter.max_frames=8",
        f"llm.path={llama}", "train.steps=4", "train.batch_size=2", "train.save_every=2", "train.log_every=1",
        "train.warmup_steps=1",
    ]
    return root, overrides


def test_kill_and_resume_gives_the_same_losses(setup):
    root, overrides = setup
    straight = train(load_config(None, [*overrides, f"out={root / 'straight'}"]))
    assert straight["step"] == 4 and len(straight["losses"]) == 4 and straight["train_questions"] == 6
    cfg = load_config(None, [*overrides, f"out={root / 'killed'}"])
    stopped = train(cfg, stop_after=2)
    assert stopped["stopped"] and stopped["step"] == 2 and not (root / "killed" / "adapter").exists()
    resumed = train(cfg)
    assert resumed["losses"] == straight["losses"]
    prompt = (root / "straight" / "prompt.txt").read_text()
    assert prompt.startswith("A chat between") and "USER: <video>\nWhat gymnastics move" in prompt
    config = read_adapter_config(root / "straight" / "adapter")
    assert config["features"]["layout"] == [[1, 5], [3, 7], [0, 2, 4, 6]] and config["template"] == "vicuna_v1.1"
    again = export_run(root / "straight", root / "exported")
    assert (again / "adapter.safetensors").read_bytes() == (root / "straight" / "adapter" / "adapter.safetensors").read_bytes()


def test_every_method_writes_predictions_gymqa_scores(setup):
    root, overrides = setup
    run = root / "straight"
    if not (run / "adapter").is_dir():
        train(load_config(None, [*overrides, f"out={run}"]))
    summary = evaluate_run(run, methods=["likelihood", "generate", "letter"], circular=True)
    assert set(summary["methods"]) == {"likelihood_sum", "likelihood_mean", "generate", "letter"}
    assert summary["questions"] == 6 and summary["skipped"] == 1  # clip99 has no features
    for name, result in summary["methods"].items():
        report = score_files(root / "test.jsonl", run / "eval" / f"predictions_{name}.jsonl")
        assert report.missing == 1 and report.overall.n == 7  # gymqa counts the skipped question as wrong
        assert report.overall.correct == round(result["accuracy"] * 6)
        rows = [json.loads(line) for line in (run / "eval" / f"predictions_{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 6 * 4  # every question and its 3 rotations
    # likelihood scores do not depend on the option order: a rotation's scores are the original's, rotated
    rows = {r["id"]: r["loglikelihoods"] for r in map(json.loads, (run / "eval" / "predictions_likelihood_mean.jsonl")
                                                         .read_text().splitlines())}
    assert rows["test-0@r1"] == rows["test-0"][1:] + rows["test-0"][:1]


def test_cli_eval_export_and_ask(setup, exported, fake_run, capsys):
    from sefar.cli import main

    root, overrides = setup
    run = root / "straight"
    if not (run / "adapter").is_dir():
        train(load_config(None, [*overrides, f"out={run}"]))
    assert main(["bridge", "eval", str(run), "--method", "letter", "--max-questions", "2", "--no-circular",
                 "--out", str(root / "cli_eval")]) == 0
    assert "| straight | letter | 2 |" in capsys.readouterr().out
    assert main(["bridge", "export", str(run), str(root / "cli_export")]) == 0
    video = fake_run.parent / "data" / "videos" / "clip2.mp4"
    assert main(["bridge", "ask", str(root / "cli_export"), str(video), "what move", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip()  # some streamed text
    assert main(["bridge", "ask", str(root / "cli_export"), str(root / "nope.mp4"), "what move"]) == 2
    assert "error: " in capsys.readouterr().err


def test_instruction_adapter_trains_exports_and_scores(setup, monkeypatch):
    root, overrides = setup
    seen = []  # the instructions the adapter gets, call by call
    forward = QFormerAdapter.forward
    monkeypatch.setattr(QFormerAdapter, "forward", lambda self, visual, instructions=None: (
        seen.append(instructions), forward(self, visual, instructions))[1])
    run = root / "instruct"
    summary = train(load_config(None, [*overrides, f"out={run}", "adapter.instruction=true", "train.steps=2",
                                       "train.objective=letter"]))
    assert summary["step"] == 2 and all(map(math.isfinite, summary["losses"]))
    assert len(seen) == 2 and all(len(batch) == 2 for batch in seen)
    assert all(text.startswith("What gymnastics move") and "? A." in text for batch in seen for text in batch)
    assert read_adapter_config(run / "adapter")["adapter"]["instruction"] is True
    assert (run / "adapter" / TOKENIZER_DIR).is_dir()
    again = export_run(run, root / "instruct_export")  # the tokenizer comes from RUN/checkpoints
    assert (again / TOKENIZER_DIR / "tokenizer.json").is_file()
    assert (again / "adapter.safetensors").read_bytes() == (run / "adapter" / "adapter.safetensors").read_bytes()
    seen.clear()
    result = evaluate_run(run, methods=["likelihood", "letter"], max_questions=2, circular=False)
    assert result["questions"] == 2 and set(result["methods"]) == {"likelihood_sum", "likelihood_mean", "letter"}
    likelihood, letter = seen  # one batch per method; likelihood: the stems; letter: the lettered questions
    assert likelihood == ["What gymnastics move is this athlete performing?"] * 2
    assert len(letter) == 2 and all(text.startswith("What gymnastics move") and "? A." in text for text in letter)


def test_fused_adapter_trains_exports_scores_and_chats(setup, exported, fake_run, monkeypatch):
    """``adapter.use_fused=true``: the cache's fused feature reaches the adapter in training, scoring and chat."""
    from bridge.chat import VideoChat
    from encoder.export import read_export_config

    root, overrides = setup
    seen = []  # the fused features the adapter gets, call by call
    forward = QFormerAdapter.forward
    monkeypatch.setattr(QFormerAdapter, "forward", lambda self, visual, instructions=None: (
        seen.append(visual.fused), forward(self, visual, instructions))[1])
    run = root / "fused"
    summary = train(load_config(None, [*overrides, f"out={run}", "adapter.use_fused=true", "train.steps=2"]))
    assert summary["step"] == 2 and all(map(math.isfinite, summary["losses"]))
    width = read_export_config(exported)["architecture"]["fusion_dim"]  # the SeFAR head's width, not the tokens'
    assert width != read_export_config(exported)["architecture"]["embed_dim"]
    assert len(seen) == 2 and all(f is not None and f.shape == (2, width) for f in seen)
    adapter = read_adapter_config(run / "adapter")["adapter"]
    assert adapter["use_fused"] is True and adapter["fused_dim"] == width
    seen.clear()
    result = evaluate_run(run, methods=["likelihood"], max_questions=2, circular=False)
    assert result["questions"] == 2 and seen and all(f is not None for f in seen)
    chat = VideoChat.load(exported, run / "adapter", None)
    clip = chat.encode(fake_run.parent / "data" / "videos" / "clip0.mp4")
    seen.clear()
    index, scores = chat.choose(clip, "What gymnastics move is this athlete performing?", list(CLASS_NAMES[:3]))
    assert len(scores) == 3 and len(seen) == 1 and seen[0].shape == (1, width)
    assert torch.equal(seen[0][0], clip.features["fused"])


def test_a_cache_without_the_fused_feature_is_one_clear_error_in_training_and_scoring(setup, monkeypatch):
    from bridge.featurecache import FeatureCache
    from bridge.llm import load_llm

    root, overrides = setup
    run = root / "fused_check"
    train(load_config(None, [*overrides, f"out={run}", "adapter.use_fused=true", "train.steps=1"]))
    loads = []
    monkeypatch.setattr("bridge.train.load_llm", lambda *a, **k: loads.append(1) or load_llm(*a, **k))
    monkeypatch.setattr(FeatureCache, "fused_width", property(lambda self: None))
    with pytest.raises(DataError, match="records no 'fused' feature") as err:
        train(load_config(None, [*overrides, f"out={root / 'nofused'}", "adapter.use_fused=true", "train.steps=1"]))
    assert str(err.value).endswith("set adapter.use_fused=false") and not loads  # refused before the LLM loads
    with pytest.raises(DataError, match=r"holds no fused feature, the adapter \(adapter.use_fused\) takes one of"):
        evaluate_run(run, methods=["likelihood"], max_questions=1, circular=False)
    monkeypatch.setattr(FeatureCache, "fused_width", property(lambda self: 7))
    with pytest.raises(DataError, match="a fused feature of width 7"):
        evaluate_run(run, methods=["likelihood"], max_questions=1, circular=False)


def test_resuming_under_another_config_is_refused(setup):
    root, overrides = setup
    run = root / "resume_check"
    base = [*overrides, f"out={run}", "train.steps=4"]
    train(load_config(None, base), stop_after=2)
    with pytest.raises(ConfigError) as err:
        train(load_config(None, [*base, "train.lr=0.01"]))
    assert str(err.value).startswith(f"{run / 'config.yaml'}: the run was trained with another config (train.lr: ")
    assert "\n" not in str(err.value)
    summary = train(load_config(None, [*base, "train.log_every=2", "eval.max_questions=1"]))  # free keys resume
    assert summary["step"] == 4
