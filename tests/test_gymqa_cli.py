"""``sefar gymqa ...`` end to end on the small FineGym-format fixture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gymqa.question import read_questions_jsonl
from sefar.cli import main
from test_gymqa_build import write_mini_finegym


@pytest.fixture()
def mini(tmp_path: Path) -> dict[str, Path]:
    return write_mini_finegym(tmp_path / "finegym")


def _build_args(mini: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["gymqa", "build", "--categories", str(mini["categories"]), "--set-names", str(mini["set_names"]),
            "--train", str(mini["train"]), "--val", str(mini["val"]), "--qtree", str(mini["qtree"]),
            "--out", str(out), *extra]


def test_build_stats_rotate_score(mini: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "qa"
    assert main(_build_args(mini, out, "--types", "all", "--strategy", "same-set", "--name", "mini")) == 0
    assert "| mini | test | yesno | 84 |" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["strategy"] == "same-set" and manifest["name"] == "mini"

    assert main(["gymqa", "stats", str(out), "--out", str(tmp_path / "stats.json")]) == 0
    assert "| duplicate options | - | 0 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "stats.json").read_text())["questions"] == 4 * (28 + 84)

    assert main(["gymqa", "rotate", str(out / "test.jsonl"), str(tmp_path / "rot.jsonl")]) == 0
    rotated = read_questions_jsonl(tmp_path / "rot.jsonl")
    assert len(rotated) == 84 * (4 + 4 + 4 + 2)
    predictions = tmp_path / "pred.jsonl"
    lines = (json.dumps({"id": q.id, "text": f"Answer: {q.answer_letter}"}) + "\n" for q in rotated)
    predictions.write_text("".join(lines))
    assert main(["gymqa", "score", str(tmp_path / "rot.jsonl"), str(predictions), "--out", str(tmp_path / "r.json"),
                 "--markdown", str(tmp_path / "r.md")]) == 0
    assert "| overall | all | 336 | 336 | 100.00% |" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["circular"]["accuracy"] == 1.0 and (tmp_path / "r.md").is_file()


def test_export_and_import(mini: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "qa"
    assert main(_build_args(mini, out)) == 0
    paper = tmp_path / "test.json"
    assert main(["gymqa", "export", str(out / "test.jsonl"), str(paper)]) == 2
    assert "error: " in capsys.readouterr().err
    assert main(["gymqa", "export", str(out / "test.jsonl"), str(paper), "--missing-frame-length", "16"]) == 0
    assert main(["gymqa", "import", str(paper), str(tmp_path / "back.jsonl"), "--categories", str(mini["categories"]),
                 "--lists", str(mini["val"])]) == 0
    back, ours = read_questions_jsonl(tmp_path / "back.jsonl"), read_questions_jsonl(out / "test.jsonl")
    def key(q):
        return q.options, q.answer, q.clabel, q.event

    assert [key(q) for q in back] == [key(q) for q in ours]
    # the paper's file is scored directly; its keys are the question ids
    predictions = tmp_path / "pred.json"
    predictions.write_text(json.dumps({key: entry["answer"] for key, entry in json.loads(paper.read_text()).items()}))
    capsys.readouterr()
    assert main(["gymqa", "score", str(paper), str(predictions), "--categories", str(mini["categories"]),
                 "--lists", str(mini["val"])]) == 0
    out = capsys.readouterr().out
    assert "| overall | all | 84 | 84 | 100.00% |" in out and "| event | UB | 18 | 18 | 100.00% |" in out


def test_bad_input_exits_2_with_one_line(mini: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mini["val"].write_text("bad line\n")
    assert main(_build_args(mini, tmp_path / "qa")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {mini['val']}:1: expected '<clip id> <label>'") and "\n" not in err
    assert main(["gymqa", "build", "--out", str(tmp_path / "x")]) == 2
    assert "either --finegym DIR" in capsys.readouterr().err
    assert main(_build_args(mini, tmp_path / "qa", "--strategy", "hardest", "--num-options", "1")) == 2
    err = capsys.readouterr().err
    assert "strategy='hardest'" in err and "num_options=1" in err
