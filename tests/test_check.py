"""Dataset checking: layouts, missing/unreadable videos, labels, table and JSON output (encoder/data/check.py)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from common.errors import DataError
from encoder.data.check import check_dataset, format_report
from encoder.data.prepare import write_video
from sefar.cli import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FINEGYM = SHARED / "finegym"

CLIPS = {  # clip id -> label, as in a FineGym/SynGym element list
    "syn0001_E_000010_000020_A_0001_0002": 0,
    "syn0001_E_000010_000020_A_0003_0004": 1,
    "syn-02_E_000000_000005_A_0000_0001": 1,
}


def _video(path: Path, n: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, np.full((n, 16, 16, 3), 128, np.uint8), 10)


def _finegym_folder(root: Path) -> Path:
    """A folder in SynGym's layout: categories.txt, train/val element lists and clips under videos/."""
    root.mkdir()
    (root / "categories.txt").write_text(
        "Clabel:   0; set:  1; Glabel:   0; (VT) handspring\nClabel:   1; set: 21; Glabel:   1; (FX) split leap\n")
    (root / "set_categories.txt").write_text("set: 1; VT\nset: 21; FX_leap_jump_hop\n")
    (root / "train_element.txt").write_text("".join(f"{c} {label}\n" for c, label in CLIPS.items()))
    (root / "val_element.txt").write_text("syn0003_E_000001_000002_A_0000_0001 0\n")
    for clip in CLIPS:
        _video(root / "videos" / f"{clip}.mp4")
    _video(root / "videos" / "val" / "syn0003_E_000001_000002_A_0000_0001.mp4")
    return root


def test_finegym_folder_ok(tmp_path):
    report = check_dataset(_finegym_folder(tmp_path / "syn"))
    assert report.kind == "finegym" and report.ok, report.problems()
    train = {lr.name: lr for lr in report.lists}["train_element.txt"]
    assert (train.num_samples, train.class_counts, len(train.classes)) == (3, {0: 1, 1: 2}, 2)
    assert train.classes[1] == "(FX) split leap"
    table = format_report(report)
    assert table.splitlines()[-1] == "OK"
    assert any(line.startswith("train_element.txt") and " 3 " in line for line in table.splitlines())


def test_finegym_folder_problems_and_cli_exit_code(tmp_path, capsys):
    root = _finegym_folder(tmp_path / "syn")
    (root / "videos" / "syn-02_E_000000_000005_A_0000_0001.mp4").unlink()
    (root / "videos" / "syn0001_E_000010_000020_A_0003_0004.mp4").write_bytes(b"not a video at all")
    (root / "val_element.txt").write_text("syn0003_E_000001_000002_A_0000_0001 5\n")
    report = check_dataset(root)
    assert report.kind == "finegym" and not report.ok
    train, val = report.lists
    assert train.missing == ["syn-02_E_000000_000005_A_0000_0001"]
    assert len(train.unreadable) == 1
    assert train.unreadable[0].startswith(str(root / "videos" / "syn0001_E_000010_000020_A_0003_0004.mp4") + ": ")
    assert val.error == f"{root / 'val_element.txt'}:1: label 5 is out of range for the 2 classes of categories.txt"
    assert len(report.problems()) == 3

    assert main(["data", "check", str(root), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["kind"] == "finegym" and data["videos"] == "open"
    assert data["lists"][0]["class_counts"] == {"0": 1, "1": 2}
    assert data["lists"][0]["missing"] == ["syn-02_E_000000_000005_A_0000_0001"]
    # without opening, the corrupt clip goes unnoticed but the missing one does not
    assert main(["data", "check", str(root), "--no-open"]) == 1
    out = capsys.readouterr().out
    assert "problem: train_element.txt: 1 of 3 videos missing, e.g. syn-02_E" in out
    assert "unreadable" in out.splitlines()[1] and out.rstrip().endswith("2 problem(s) found")


def test_element_list_without_categories_is_a_problem(tmp_path):
    root = _finegym_folder(tmp_path / "syn")
    (root / "categories.txt").rename(root / "syn_categories.txt")
    (root / "other_categories.txt").write_text("Clabel: 0; set: 1; Glabel: 0; (VT) x\n")
    (root / "syn_val_element.txt").write_text("\n")
    report = check_dataset(root, videos="skip")
    assert report.problems()[-1] == "syn_val_element.txt: the list has no samples"
    assert report.issues == [
        f"{root / name}: no matching '<name>_categories.txt' for this element list"
        for name in ("train_element.txt", "val_element.txt")
    ]
    assert [lr.name for lr in report.lists] == ["syn_val_element.txt"]
    assert not report.ok


@pytest.mark.skipif(not FINEGYM.is_dir(), reason="real FineGym lists not found in ../shared/data")
def test_real_finegym_release_lists(capsys):
    assert main(["data", "check", str(FINEGYM), "--lists-only"]) == 0
    out = capsys.readouterr().out
    assert "(finegym; videos: skip)" in out.splitlines()[0]
    report = check_dataset(FINEGYM, videos="skip")
    counts = {lr.name: (lr.num_samples, len(lr.classes)) for lr in report.lists}
    assert counts == {
        "gym288_train_element_v1.1.txt": (29334, 288),
        "gym288_val_element.txt": (9646, 288),
        "gym99_train_element_v1.1.txt": (26320, 99),
        "gym99_val_element.txt": (8521, 99),
    }
    assert len(report.lists[2].class_counts) == 99  # every gym99 class has training clips


def test_list_file_with_videos_root_and_trims(tmp_path):
    videos = tmp_path / "clips"
    _video(videos / "a.mp4", n=20)
    _video(videos / "b.mp4")
    (videos / "c.mp4").write_bytes(b"")
    lst = tmp_path / "labeled.csv"
    lst.write_bytes(b"/root/video/a.mp4 2 0.5 1.5\r\n/root/video/b.mp4 0\r\n/root/video/c.mp4 0\r\n"
                    b"/root/video/a.mp4 1 5 6\r\n")
    report = check_dataset(lst, videos_root=videos)
    assert report.kind == "list"
    (lr,) = report.lists
    assert lr.class_counts == {2: 1, 0: 2, 1: 1} and lr.missing == []
    assert lr.unreadable == [f"{videos / 'c.mp4'}: file is empty (0 bytes)",
                             f"{videos / 'a.mp4'}: trim range [5.0, 6.0) sec holds no frames (video has 20)"]
    # without --videos-root the absolute /root/video paths do not exist here
    assert check_dataset(lst, videos="exists").lists[0].missing[0] == "/root/video/a.mp4"


def test_malformed_list_is_reported_with_its_line(tmp_path, capsys):
    lst = tmp_path / "train.txt"
    lst.write_text("a.mp4 0\nb.mp4 zero\n")
    assert main(["data", "check", str(lst)]) == 1
    assert f"problem: {lst}:2: label 'zero' is not an integer class index" in capsys.readouterr().out


def test_ucf101_folder(tmp_path):
    split_dir = tmp_path / "ucfTrainTestlist"
    split_dir.mkdir()
    (split_dir / "classInd.txt").write_text("1 Archery\n2 Bowling\n")
    (split_dir / "trainlist01.txt").write_text("Archery/v_Archery_g08_c01.avi 1\nBowling/v_Bowling_g08_c01.avi 2\n")
    (split_dir / "testlist01.txt").write_text("Bowling/v_Bowling_g01_c01.avi\n")
    videos = tmp_path / "UCF-101"
    for rel in ("Archery/v_Archery_g08_c01.avi", "Bowling/v_Bowling_g08_c01.avi", "Bowling/v_Bowling_g01_c01.avi"):
        _video(videos / rel)
    report = check_dataset(split_dir, videos_root=videos)
    assert report.kind == "ucf101" and report.ok, report.problems()
    assert [(lr.name, lr.num_samples) for lr in report.lists] == [("split1/train", 2), ("split1/test", 1)]


def test_finediving_folder(tmp_path):
    from PIL import Image

    root = tmp_path / "FineDiving"
    (root / "Annotations").mkdir(parents=True)
    coarse = {("WorldCup", 0): {"action_type": "107B", "start_frame": 3, "end_frame": 5},
              ("WorldCup", 1): {"action_type": "5253B", "start_frame": 9, "end_frame": 9}}
    (root / "Annotations" / "FineDiving_coarse_annotation.pkl").write_bytes(pickle.dumps(coarse))
    (root / "Annotations" / "train_split.pkl").write_bytes(pickle.dumps([("WorldCup", 0)]))
    (root / "Annotations" / "test_split.pkl").write_bytes(pickle.dumps([("WorldCup", 1)]))
    folder = root / "FINADiving_MTL_256s" / "WorldCup" / "0"
    folder.mkdir(parents=True)
    for i in (3, 4, 5):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / f"{i:05d}.jpg")
    report = check_dataset(root)
    assert report.kind == "finediving"
    test, train = report.lists
    assert (train.name, train.num_samples, train.missing, train.unreadable) == ("train_split.pkl", 1, [], [])
    assert test.classes == ["107b", "5253b"]
    assert test.missing == [str(root / "FINADiving_MTL_256s" / "WorldCup" / "1")]


def test_folder_without_lists_and_bad_arguments(tmp_path):
    report = check_dataset(tmp_path)
    assert report.kind == "lists" and report.problems() == [
        f"{tmp_path}: no list files (*.txt, *.csv, *.jsonl) and no known dataset layout"]
    with pytest.raises(DataError, match="nope: no such file or folder"):
        check_dataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="videos='all'"):
        check_dataset(tmp_path, videos="all")
