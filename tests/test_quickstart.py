"""The main job end to end on the tiny SynGym, with a 2-step budget: every stage runs and resumes.

The adapters run on a tiny random LLaMA here (the embedded SmolLM2 is exercised by tests/test_bridge_llm.py and the
slow end-to-end bridge test), so this test checks the wiring of every stage, not accuracy.
"""

import json

import pytest
from bridge_fixtures import tiny_llama
from safetensors.torch import load_file

from common.results import format_table, read_result
from pipelines.quickstart import (
    classifier_answers, direction_pair_accuracy, encoder_table, pseudo_label_accuracy, run_quickstart,
)


@pytest.mark.slow
def test_quickstart_runs_every_stage_and_resumes(tmp_path, capsys, monkeypatch):
    # 4 steps: SeFAR's first 2 (supervised-only) are forked from the supervised run's checkpoint at step 2
    overrides = ["optim.epochs=2", "optim.steps_per_epoch=2", "optim.warmup_steps=1", "data.num_workers=0",
                 "optim.batch_size=4", "optim.micro_batch_size=4", "ssl.passes=2", "ssl.supervised_epochs=1",
                 "log_every=1"]
    bridge = [f"llm.path={tiny_llama(tmp_path / 'llama')}", "adapter.num_layers=1", "adapter.num_queries=4",
              "train.steps=2", "train.batch_size=2", "train.save_every=1", "eval.max_questions=4"]
    monkeypatch.chdir(tmp_path)  # what it prints and records is relative to the working directory
    summary = run_quickstart(".", seed=0, size="tiny", overrides=overrides, bridge_overrides=bridge)
    printed = capsys.readouterr().out
    assert "into syngym" in printed, printed
    assert str(tmp_path) not in printed, [line for line in printed.splitlines() if str(tmp_path) in line]
    assert summary["export"] == "export/sefar_tiny" and summary["gymqa"]["folder"] == "gymqa"
    modes = [r["mode"] for r in summary["rows"]]
    assert modes == ["supervised", "sefar"]
    assert "(its first 2 steps, supervised-only, are the supervised run's: forked from there)" in printed
    assert summary["rows"][1]["forked_from"]["step"] == 2 and "forked_from" not in summary["rows"][0]
    for row in summary["rows"]:
        assert row["step"] == 4 and row["labeled"] == 33
        for which in ("student", "teacher"):  # the reported accuracy is that of the saved val predictions
            saved = load_file(tmp_path / "encoder" / row["mode"] / "final" / f"val_predictions_{which}.safetensors")
            assert saved["probs"].shape == (33, 33)
            accuracy = (saved["probs"].argmax(1) == saved["labels"]).float().mean().item()
            assert row[which]["top1"] == pytest.approx(accuracy)
        assert 0.0 <= row["direction_pairs"] <= 1.0
    assert summary["rows"][0]["pseudo_label_accuracy"] is None  # supervised: no pseudo-labels
    assert 0.0 <= summary["rows"][1]["pseudo_label_accuracy"] <= 1.0
    assert (tmp_path / "export" / "sefar_tiny" / "model.safetensors").is_file()
    assert summary["gymqa"]["train"] == 33 and summary["gymqa"]["test"] == 33
    record = read_result(tmp_path / "quickstart.json")  # a result file, with what made it
    assert record["data"]["rows"] == summary["rows"] and record["provenance"]["commit"]
    assert [t["title"].split()[0] for t in record["tables"]] == ["Encoders", "Q-Former"]
    for name in ("sefar", "frames"):
        scored = summary["bridge"][name]
        assert scored["questions"] == 4 and set(scored["methods"]) == {"likelihood_sum", "likelihood_mean"}
        assert (tmp_path / "bridge" / name / "adapter" / "adapter.safetensors").is_file()
        assert (tmp_path / "bridge" / name / "eval" / "predictions_likelihood_mean.jsonl").is_file()
    assert "| supervised | 33 | 4 |" in printed and "| SeFAR features | likelihood_mean | 4 |" in printed
    assert "| frame-wise EfficientNet-Lite0 | likelihood_mean | 4 |" in printed
    reference = summary["classifier"]["methods"]["classifier"]  # the SeFAR teacher's classifier, same questions
    assert summary["classifier"]["questions"] == 4 and reference["n"] == 4 and 0.0 <= reference["accuracy"] <= 1.0
    assert "| SeFAR teacher's classifier (no LLM) | classifier | 4 |" in printed

    again = run_quickstart(tmp_path, seed=0, size="tiny", overrides=overrides, bridge_overrides=bridge)
    out = capsys.readouterr().out  # every stage is reused
    assert "SynGym already in" in out and "already trained" in out and "bridge/frames: already trained and scored" in out
    assert again["rows"] == summary["rows"] and again["bridge"]["sefar"]["methods"] == summary["bridge"]["sefar"]["methods"]


def test_format_table():
    rows = [{"mode": "sefar", "labeled": 10, "step": 5, "train_seconds": 12.3,
             "student": {"top1": 0.25, "top5": 0.8, "mean_class_accuracy": 0.2},
             "teacher": {"top1": 0.5, "top5": 0.9, "mean_class_accuracy": 0.4},
             "direction_pairs": 0.75, "pseudo_label_accuracy": 0.125}]
    assert (format_table(encoder_table(rows)).splitlines()[-1]
            == "| sefar | 10 | 5 | 25.0 | 50.0 | 90.0 | 40.0 | 75.0 | 12.5 | 12 |")
    rows[0]["pseudo_label_accuracy"] = None
    assert "| 75.0 | - | 12 |" in format_table(encoder_table(rows))


def test_direction_pair_accuracy_compares_the_reversed_sibling_only(tmp_path):
    import torch
    from safetensors.torch import save_file

    (tmp_path / "final").mkdir()
    probs = torch.tensor([[0.5, 0.2, 0.3, 0.0],   # label 0, sibling 1: wins
                          [0.5, 0.2, 0.3, 0.0],   # label 1, sibling 0: loses
                          [0.1, 0.6, 0.1, 0.2],   # label 2, sibling 3: loses (top-1 is class 1, not the pair)
                          [0.9, 0.0, 0.0, 0.1]])  # label 3 against 2: wins although top-1 is wrong
    save_file({"probs": probs, "labels": torch.tensor([0, 1, 2, 3])},
              str(tmp_path / "final" / "val_predictions_teacher.safetensors"))
    assert direction_pair_accuracy(tmp_path, [(0, 1), (2, 3)]) == 0.5
    assert direction_pair_accuracy(tmp_path, [(0, 1)]) == 0.5
    with pytest.raises(ValueError, match="no val clip"):
        direction_pair_accuracy(tmp_path, [(5, 6)])


def test_pseudo_label_accuracy_is_the_last_epoch_mean(tmp_path):
    records = [{"step": s, "epoch": s / 2, "pseudo_accuracy": None if s <= 2 else s / 10} for s in range(1, 7)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert pseudo_label_accuracy(tmp_path) == pytest.approx(0.55)  # epochs 2.5 and 3.0: steps 5 and 6
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "epoch": 0.5, "pseudo_accuracy": None}) + "\n")
    assert pseudo_label_accuracy(tmp_path) is None


def _classifier_run(tmp_path, probs):
    """A finished run on 3 val clips of 4 classes; class 1 (BB) shares its name with class 0 (FX); 2 and 3 are
    time-reversed siblings."""
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from encoder.config import load_config

    data = tmp_path / "data"
    data.mkdir()
    (data / "categories.txt").write_text(
        "Clabel: 0; set: 24; Glabel: 0; (FX) salto forward tucked\n"
        "Clabel: 1; set: 33; Glabel: 1; (BB) salto forward tucked\n"
        "Clabel: 2; set: 25; Glabel: 2; (FX) double salto forward\n"
        "Clabel: 3; set: 25; Glabel: 3; (FX) double salto backward\n")
    clips = ["aaaaaaaaaaa_E_000001_000002_A_0001_0002", "aaaaaaaaaaa_E_000001_000002_A_0003_0004",
             "aaaaaaaaaaa_E_000001_000002_A_0005_0006"]
    (data / "val.txt").write_text("".join(f"{c} {y}\n" for c, y in zip(clips, (0, 2, 3))))
    (data / "train.txt").write_text(f"{clips[0]} 0\n")
    cfg = load_config(None, [f"data.root={data}", "data.categories=categories.txt", "data.train_list=train.txt",
                             "data.val_list=val.txt", f"out={tmp_path / 'run'}"])
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg.to_dict()), run / "config.yaml")
    save_file({"probs": torch.tensor(probs), "labels": torch.tensor([0, 2, 3])},
              str(run / "final" / "val_predictions_teacher.safetensors"))
    pairs = {"double salto forward": "double salto backward", "double salto backward": "double salto forward"}

    def question(i, clip, options, answer, event="FX"):
        return {"id": f"test-{i}", "clip_id": clip, "question": "What gymnastics move is this athlete performing?",
                "options": options, "answer": answer, "type": "element", "level": "element", "event": event}

    names = ["salto forward tucked", "double salto forward", "double salto backward"]
    questions = [question(0, clips[0], names, 0), question(1, clips[1], names, 1), question(2, clips[2], names, 2),
                 question(3, clips[2], ["salto forward tucked", "double salto backward"], 1)]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return run, tmp_path / "test.jsonl", pairs


def test_classifier_answers_score_the_encoders_choice_among_the_options(tmp_path):
    probs = [[0.3, 0.3, 0.4, 0.0],    # "salto forward tucked" 0.6 (both events' classes) beats 0.4: right
             [0.1, 0.0, 0.5, 0.4],    # right; the sibling scores lower: a direction win
             [0.0, 0.0, 0.6, 0.4]]    # true "backward" loses to "forward" (question 2: wrong) but beats "salto
                                      # forward tucked" (question 3: right); both direction losses
    run, questions, pairs = _classifier_run(tmp_path, probs)
    summary = classifier_answers(run, questions, ["element"], None, True, pairs)
    result = summary["methods"]["classifier"]
    assert summary["questions"] == 4 and result["n"] == 4
    assert result["accuracy"] == 0.75 and result["circular"] == 0.75  # the choice does not depend on the order
    assert (result["direction_pairs"], result["pair_accuracy"]) == (3, pytest.approx(1 / 3))
    first = classifier_answers(run, questions, ["element"], 2, False, pairs)["methods"]["classifier"]
    assert (first["n"], first["accuracy"], first["direction_pairs"]) == (2, 1.0, 1)


def test_classifier_answers_refuse_questions_they_cannot_map(tmp_path):
    run, questions, pairs = _classifier_run(tmp_path, [[1.0, 0.0, 0.0, 0.0]] * 3)
    lines = questions.read_text().splitlines()
    questions.write_text(lines[0].replace("double salto forward", "giant circle") + "\n")
    with pytest.raises(ValueError, match="'giant circle' names no class"):
        classifier_answers(run, questions, ["element"], None, True, pairs)
    questions.write_text(lines[0].replace("A_0001_0002", "A_0009_0010") + "\n")
    with pytest.raises(ValueError, match="not in .* val list"):
        classifier_answers(run, questions, ["element"], None, True, pairs)


def test_a_finished_adapter_run_is_reused_only_under_its_config(tmp_path):
    from omegaconf import OmegaConf

    from bridge.config import load_config
    from common.errors import ConfigError
    from pipelines.quickstart import BRIDGE_CONFIGS, adapter_stage

    out = tmp_path / "qs"
    run = out / "bridge" / "sefar"
    (run / "eval").mkdir(parents=True)
    cfg = load_config(BRIDGE_CONFIGS["sefar"], [f"out={run}", f"encoder.export={out / 'export' / 'sefar_tiny'}"])
    saved = OmegaConf.to_container(OmegaConf.structured(cfg))
    del saved["adapter"]["use_fused"]  # a run from before the key existed: it takes the default (false) as it did
    (run / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    (run / "train.json").write_text(json.dumps({"train_seconds": 1.0, "feature_seconds": 0.5}))
    (run / "eval" / "results.json").write_text(json.dumps({"questions": 1, "methods": {}}))
    summary = adapter_stage(out, "sefar", ["adapter.use_fused=false"], {})  # the same config: reused
    assert summary["train_seconds"] == 1.0 and summary["questions"] == 1
    moved = tmp_path / "moved"
    (out).rename(moved)
    assert adapter_stage(moved, "sefar", ["adapter.use_fused=false"], {})["train_seconds"] == 1.0  # folder moved
    for change in (["adapter.use_fused=true"], ["adapter.use_fused=false", "seed=1"],
                   ["adapter.use_fused=false", "llm.dtype=float32"]):
        with pytest.raises(ConfigError) as err:
            adapter_stage(moved, "sefar", change, {})
        key = change[-1].split("=")[0]
        assert str(err.value).startswith(f"{moved / 'bridge' / 'sefar' / 'config.yaml'}: the run was trained with "
                                         f"another config ({key}: ") and "\n" not in str(err.value)
