"""Evaluation: metrics on hand-made probabilities, multi-view averaging, teacher spread, run/export reports."""

from __future__ import annotations

import json

import pytest
import torch
from test_export import CLASS_NAMES, LABELS, exported, fake_run  # noqa: F401 (fixtures)

from common.finegym import Category
from encoder.data.sampling import segment_frame_indices
from encoder.data.splits import Sample
from encoder.data.video import read_frames, video_info
from encoder.evaluate import (
    compute_metrics,
    confusion_matrix,
    evaluate_run,
    plot_confusion,
    predict,
    predict_views,
    predict_views_many,
    spread_summary,
)
from encoder.export import PreprocessConfig, eval_views
from encoder.ssl import PseudoLabels
from encoder.timesformer import create_model
from sefar.cli import main

CATS = [
    Category(0, 0, 1, "VT", "a"), Category(1, 1, 1, "VT", "b"), Category(2, 2, 21, "FX", "c"),
    Category(3, 3, 22, "FX", "d"), Category(4, 4, 31, "BB", "e"),
]


def _probs(rows: list[list[float]]) -> torch.Tensor:
    p = torch.tensor(rows)
    return p / p.sum(1, keepdim=True)


def test_metrics_on_hand_made_probabilities():
    # 6 clips, 7 classes; argmax / rank of the true class chosen by hand
    probs = _probs([
        [9, 1, 2, 3, 4, 5, 6],  # label 0: right
        [1, 9, 2, 3, 4, 5, 6],  # label 0: wrong; true class ranked 7th -> outside top-5
        [2, 1, 9, 3, 4, 5, 6],  # label 1: wrong; ranked 7th -> outside top-5
        [1, 8, 9, 2, 3, 4, 5],  # label 1: wrong; ranked 2nd -> inside top-5
        [1, 2, 9, 3, 4, 5, 6],  # label 2: right
        [1, 2, 3, 4, 5, 6, 9],  # label 6: right
    ])
    labels = torch.tensor([0, 0, 1, 1, 2, 6])
    m = compute_metrics(probs, labels, [f"c{i}" for i in range(7)])
    assert m["top1"] == pytest.approx(3 / 6)
    assert m["top5"] == pytest.approx(4 / 6)
    per = {row["name"]: row for row in m["per_class"]}
    assert per["c0"]["accuracy"] == 0.5 and per["c1"]["accuracy"] == 0.0 and per["c2"]["accuracy"] == 1.0
    assert per["c3"] == {"label": 3, "name": "c3", "count": 0, "accuracy": None}
    assert m["mean_class_accuracy"] == pytest.approx((0.5 + 0.0 + 1.0 + 1.0) / 4)  # classes 0, 1, 2, 6
    assert m["num_clips"] == 6 and "per_event" not in m


def test_per_event_and_per_set_accuracy():
    probs = torch.eye(5)[[0, 0, 2, 2, 4, 3]]  # predictions
    labels = torch.tensor([0, 1, 2, 3, 4, 4])
    m = compute_metrics(probs, labels, [c.name for c in CATS], CATS)
    assert m["per_event"] == {
        "BB": {"count": 2, "accuracy": 0.5},
        "FX": {"count": 2, "accuracy": 0.5},
        "VT": {"count": 2, "accuracy": 0.5},
    }
    assert m["per_set"]["1"] == {"count": 2, "accuracy": 0.5}
    assert m["per_set"]["21"] == {"count": 1, "accuracy": 1.0} and m["per_set"]["22"]["accuracy"] == 0.0
    assert confusion_matrix(probs, labels)[4].tolist() == [0, 0, 0, 1, 1]


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="class names"):
        compute_metrics(torch.rand(2, 3), torch.tensor([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        compute_metrics(torch.rand(2, 3), torch.tensor([0, 3]), ["a", "b", "c"])


def test_spread_summary_groups_right_and_wrong():
    pseudo = PseudoLabels(
        probs=torch.zeros(4, 3), target=torch.tensor([0, 1, 2, 0]), confidence=torch.tensor([0.9, 0.8, 0.4, 0.3]),
        spread=torch.tensor([0.01, 0.03, 0.2, 0.3]), weight=torch.ones(4),
    )
    s = spread_summary(pseudo, torch.tensor([0, 1, 0, 1]))
    assert s["pseudo_label_accuracy"] == 0.5
    assert s["correct"]["count"] == 2 and s["correct"]["sigma"]["mean"] == pytest.approx(0.02)
    assert s["wrong"]["mu"]["median"] == pytest.approx(0.35)


def test_multi_view_probabilities_are_the_mean_over_views_and_crops(fake_run):
    torch.manual_seed(0)
    model = create_model("tiny", 5, img_size=32, depth=1).eval()
    path = fake_run.parent / "data" / "videos" / "clip0.mp4"  # 40x56: crops spread along the width
    items = [Sample(str(path), 1), Sample(str(path), 3)]
    pp = PreprocessConfig(num_frames=8, img_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    seen = []
    forward = model.forward_features
    model.forward_features = lambda x: seen.append(x.shape[0]) or forward(x)
    probs, labels = predict(model, items, pp, batch_size=2, views=2, crops=3)
    assert sum(seen) == 2 * 2 * 3 and labels.tolist() == [1, 3]
    n = video_info(path).num_frames
    expected = []
    for view in range(2):
        idx = segment_frame_indices(n, 8, train=False, views=2, view=view)
        frames = torch.from_numpy(read_frames(path, idx)).permute(0, 3, 1, 2)  # (K, C, H, W)
        with torch.no_grad():
            expected.append(model.forward_head(forward(eval_views(frames, pp, 3))).softmax(-1))  # (S, C)
    mean = torch.cat(expected).mean(0)
    torch.testing.assert_close(probs[0], mean)
    torch.testing.assert_close(probs[1], mean)
    single, _ = predict(model, items[:1], pp, views=1, crops=1)
    assert not torch.allclose(single[0], mean)  # the views really differ


def test_dropout_passes_spread_only_with_dropout(fake_run):
    path = fake_run.parent / "data" / "videos" / "clip0.mp4"
    pp = PreprocessConfig(num_frames=8, img_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    for dropout, spread in ((0.0, False), (0.5, True)):
        torch.manual_seed(0)
        model = create_model("tiny", 5, img_size=32, depth=1, head_dropout=dropout).eval()
        out = predict_views(model, [Sample(str(path), 0)], pp, passes=4)
        assert out.pass_probs.shape == (4, 1, 5)
        assert bool(out.pass_probs.std(0).max() > 1e-4) is spread
        assert not model.training and not model.head.training


def test_several_models_share_one_pass_over_the_clips(fake_run, monkeypatch):
    """A run's student and teacher are evaluated in one pass: each clip is read once, each model gives what it
    gives alone (probabilities and dropout passes), and the models' modes come back as they were."""
    import encoder.data.dataset as dataset

    path = fake_run.parent / "data" / "videos" / "clip0.mp4"
    items = [Sample(str(path), 1), Sample(str(path), 3), Sample(str(path), 0)]
    pp = PreprocessConfig(num_frames=8, img_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    torch.manual_seed(0)
    student = create_model("tiny", 5, img_size=32, depth=1, head_dropout=0.5)
    teacher = create_model("tiny", 5, img_size=32, depth=1, head_dropout=0.5).eval()
    alone = {}
    for name, model in (("student", student), ("teacher", teacher)):
        torch.manual_seed(1)
        alone[name] = predict_views(model, items, pp, batch_size=2, views=2, passes=3)
    reads = []
    real_read = dataset.read_frames
    monkeypatch.setattr(dataset, "read_frames", lambda *a, **k: reads.append(1) or real_read(*a, **k))
    torch.manual_seed(1)
    both = predict_views_many({"student": student, "teacher": teacher}, items, pp, batch_size=2, views=2, passes=3)
    assert len(reads) == len(items) * 2  # every clip's 2 temporal views, read once for both models
    for name in ("student", "teacher"):
        torch.testing.assert_close(both[name].probs, alone[name].probs)
        assert both[name].labels.tolist() == [1, 3, 0]
        assert both[name].pass_probs.shape == (3, 3, 5)
    assert not torch.allclose(both["student"].probs, both["teacher"].probs)
    assert student.training and not teacher.training
    with pytest.raises(ValueError, match="number of classes"):
        predict_views_many({"a": student, "b": create_model("tiny", 4, img_size=32, depth=1)}, items, pp)
    with pytest.raises(ValueError, match="no model"):
        predict_views_many({}, items, pp)


def test_evaluate_run_writes_reports(fake_run, tmp_path, capsys):
    results = evaluate_run(fake_run, tmp_path / "eval", passes=3, num_workers=0, device="cpu")
    for name in ("results.json", "predictions.jsonl", "confusion.png", "teacher_spread.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    m = results["metrics"]
    assert m["num_clips"] == len(LABELS) and [r["name"] for r in m["per_class"]] == CLASS_NAMES
    assert set(m["per_event"]) == {"VT", "FX", "BB"} and set(m["per_set"]) == {"1", "21", "22", "31"}
    spread = results["teacher_spread"]
    assert spread["passes"] == 3 and spread["correct"]["count"] + spread["wrong"]["count"] == len(LABELS)
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == LABELS and {"mu", "sigma", "pseudo_label"} <= set(rows[0])
    assert "top-1" in capsys.readouterr().out


def test_export_evaluation_equals_run_evaluation(fake_run, exported, tmp_path, capsys):
    data = fake_run.parent / "data"
    rc = main(["encoder", "eval", str(exported), "--list", str(data / "val.txt"), "--videos-root",
               str(data / "videos"), "--views", "2", "--crops", "2", "--passes", "0", "--workers", "0",
               "--out", str(tmp_path / "exp")])
    assert rc == 0
    from_export = json.loads((tmp_path / "exp" / "results.json").read_text())
    from_run = evaluate_run(fake_run, tmp_path / "run", views=2, crops=2, passes=0, num_workers=0, device="cpu")
    assert from_export["metrics"] == from_run["metrics"] and from_export["teacher_spread"] is None
    assert (from_export["views"], from_export["crops"]) == (2, 2)
    assert not (tmp_path / "exp" / "teacher_spread.png").exists()


def test_export_needs_a_list_and_labels_in_range(exported, fake_run, tmp_path, capsys):
    assert main(["encoder", "eval", str(exported), "--out", str(tmp_path)]) == 2
    assert "export folder, which has no val list" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{fake_run.parent / 'data' / 'videos' / 'clip0.mp4'} 9\n")
    assert main(["encoder", "eval", str(exported), "--list", str(bad), "--out", str(tmp_path)]) == 2
    assert "bad.txt: label 9" in capsys.readouterr().err


def test_confusion_plot_for_many_classes(tmp_path):
    c = 300
    probs = torch.rand(900, c)
    labels = torch.arange(900) % c
    path = plot_confusion(confusion_matrix(probs, labels), [f"class {i}" for i in range(c)], tmp_path / "cm.png")
    assert path.stat().st_size > 0


def test_direction_pair_accuracy_counts_ties_as_losses_and_skips_clips_without_a_sibling():
    from encoder.evaluate import direction_pair_accuracy, direction_partners

    pairs = [(2, 9), (3, 10)]
    elements = [2, 9, 3, 10, 0]  # the last clip's class has no time-reversed sibling
    partners = direction_partners(elements, pairs)
    assert partners.tolist() == [9, 2, 10, 3, -1]
    scores = torch.zeros(5, 11)
    scores[0, 2], scores[1, 2] = 0.9, 0.9  # clip 0 wins; clip 1 (class 9) loses to its sibling 2
    scores[2, 3] = scores[2, 10] = 0.5  # a tie is a loss
    scores[3, 10] = 0.2  # wins
    assert direction_pair_accuracy(scores, torch.tensor(elements), partners) == (pytest.approx(0.5), 4)
    # a coarser level that merges 3 and 10 (and maps 2 and 9 apart) compares only the clips it keeps apart
    mapping = {0: 0, 2: 1, 9: 2, 3: 3, 10: 3}
    partners = direction_partners(elements, pairs, mapping)
    assert partners.tolist() == [2, 1, -1, -1, -1]
    coarse = torch.zeros(5, 4)
    coarse[:, 1] = 1.0
    labels = torch.tensor([mapping[e] for e in elements])
    assert direction_pair_accuracy(coarse, labels, partners) == (pytest.approx(0.5), 2)
    assert direction_pair_accuracy(coarse, labels, torch.full((5,), -1)) == (None, 0)
