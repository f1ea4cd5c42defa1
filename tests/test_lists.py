"""UCF101 / HMDB51 official splits, CSV and JSONL lists (encoder/data/lists.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import DataError, ListFormatError
from encoder.data.lists import (
    VideoList,
    read_class_index,
    read_csv_list,
    read_hmdb51,
    read_jsonl_list,
    read_ucf101,
    read_video_list,
)
from encoder.data.splits import Sample


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


@pytest.fixture
def ucf(tmp_path) -> Path:
    """A 3-class ucfTrainTestlist folder in the official format (CRLF, 1-based labels)."""
    d = tmp_path / "ucfTrainTestlist"
    _write(d / "classInd.txt", "1 ApplyEyeMakeup\r\n2 ApplyLipstick\r\n3 Archery\r\n")
    _write(
        d / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nArchery/v_Archery_g08_c02.avi 3\r\n"
        "ApplyLipstick/v_ApplyLipstick_g08_c01.avi 2\r\n",
    )
    _write(d / "testlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\nArchery/v_Archery_g01_c01.avi\r\n")
    return d


@pytest.fixture
def hmdb(tmp_path) -> Path:
    """Two HMDB51 class files in the official format (trailing spaces, ids 0/1/2)."""
    d = tmp_path / "testTrainMulti_7030_splits"
    _write(d / "climb_stairs_test_split1.txt", "s1.avi 1 \ns2.avi 2 \ns3.avi 0 \n")
    _write(d / "brush_hair_test_split1.txt", "b1.avi 2 \nb2.avi 1 \n")
    _write(d / "brush_hair_test_split2.txt", "b1.avi 1 \nb2.avi 2 \n")
    return d


def test_ucf101_train_and_test(ucf, tmp_path):
    train = read_ucf101(ucf, split=1, subset="train")
    assert train.classes == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]
    assert train.samples == [
        Sample("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0),
        Sample("Archery/v_Archery_g08_c02.avi", 2),
        Sample("ApplyLipstick/v_ApplyLipstick_g08_c01.avi", 1),
    ]
    test = read_ucf101(ucf, subset="test", root=tmp_path / "UCF-101")
    assert [s.label for s in test.samples] == [0, 2]
    assert test.samples[1].path == str(tmp_path / "UCF-101" / "Archery" / "v_Archery_g01_c01.avi")
    assert test.num_classes == 3


@pytest.mark.parametrize(
    ("file", "text", "line", "reason"),
    [
        ("trainlist01.txt", "ApplyEyeMakeup/a.avi 1\r\nArchery/b.avi 2\r\n", 2, "label 2 does not match the class"),
        ("trainlist01.txt", "Bowling/a.avi 1\r\n", 1, "class folder 'Bowling' is not in classInd.txt"),
        ("trainlist01.txt", "a.avi 1\r\n", 1, "expected '<Class>/<video>.avi"),
        ("testlist01.txt", "Archery/a.avi\r\nArchery/b.avi x\r\n", 2, "label 'x' is not an integer"),
        ("classInd.txt", "1 ApplyEyeMakeup\r\n3 Archery\r\n", 2, "class index 3 out of order: expected 2"),
    ],
)
def test_ucf101_malformed_lines(ucf, file, text, line, reason):
    _write(ucf / file, text)
    subset = "test" if file.startswith("test") else "train"
    with pytest.raises(ListFormatError) as info:
        read_ucf101(ucf, subset=subset)
    assert str(info.value).startswith(f"{ucf / file}:{line}: ")
    assert reason in str(info.value)


def test_read_class_index_rejects_repeated_names(tmp_path):
    path = _write(tmp_path / "classInd.txt", "1 A\n2 A\n")
    with pytest.raises(ListFormatError, match=r"classInd.txt:2: class 'A' is listed twice"):
        read_class_index(path)


def test_hmdb51_splits_sorted_classes_and_ids(hmdb, tmp_path):
    train = read_hmdb51(hmdb, split=1, subset="train")
    assert train.classes == ["brush_hair", "climb_stairs"]
    assert train.samples == [Sample("brush_hair/b2.avi", 0), Sample("climb_stairs/s1.avi", 1)]
    test = read_hmdb51(hmdb, split=1, subset="test", root=tmp_path)
    assert test.samples == [
        Sample(str(tmp_path / "brush_hair/b1.avi"), 0),
        Sample(str(tmp_path / "climb_stairs/s2.avi"), 1),
    ]
    assert read_hmdb51(hmdb, split=2).samples == [Sample("brush_hair/b1.avi", 0)]


def test_hmdb51_errors(hmdb):
    with pytest.raises(DataError, match="no HMDB51 split files '<class>_test_split3.txt'"):
        read_hmdb51(hmdb, split=3)
    with pytest.raises(ValueError, match="subset='val'"):
        read_hmdb51(hmdb, subset="val")
    bad = _write(hmdb / "climb_stairs_test_split1.txt", "s1.avi 1\ns2.avi 3\n")
    with pytest.raises(ListFormatError, match=rf"{bad}:2: expected '<video>.avi <0\|1\|2>'"):
        read_hmdb51(hmdb)
    _write(hmdb / "climb_stairs_test_split1.txt", "s1.avi 1\ns1.avi 2\n")
    with pytest.raises(ListFormatError, match="duplicate of line 1"):
        read_hmdb51(hmdb)


def test_csv_list_with_names_trims_and_extra_columns(tmp_path):
    path = _write(
        tmp_path / "list.csv",
        "Label,path,start,end,note\r\nvault,a.mp4,0,2.5,x\r\nfloor,\"b, c.mp4\",,,y\r\nvault,a.mp4,3,4,z\r\n",
    )
    vl = read_csv_list(path)
    assert vl == VideoList(
        [Sample("a.mp4", 1, 0.0, 2.5), Sample("b, c.mp4", 0), Sample("a.mp4", 1, 3.0, 4.0)], ["floor", "vault"]
    )
    assert read_csv_list(path, classes=["vault", "floor", "beam"]).samples[0].label == 0


def test_csv_list_integer_labels(tmp_path):
    path = _write(tmp_path / "list.csv", "path,label\na.mp4,2\nb.mp4,0\n")
    assert read_csv_list(path).classes == ["0", "1", "2"]
    with pytest.raises(ListFormatError, match=r"list.csv:2: label 2 is out of range for 2 classes"):
        read_csv_list(path, classes=["x", "y"])


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("file,label\na,1\n", 1, "lacks the column(s) path"),
        ("path,label,start\na,1,0\n", 1, "only one of the columns start, end"),
        ("path,label\na.mp4,1\nb.mp4\n", 3, "expected 2 fields like the header, got 1"),
        ("path,label\na.mp4,1\nb.mp4,vault\n", 2, "label 1 is an index but other labels are class names"),
        ("path,label,start,end\na.mp4,1,3,1\n", 2, "need 0 <= start < end"),
        ("path,label\n,1\n", 2, "empty path"),
        ("path,label\na.mp4,1\na.mp4,0\n", 3, "duplicate of line 2"),
    ],
)
def test_csv_list_malformed(tmp_path, text, line, reason):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(ListFormatError) as info:
        read_csv_list(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert reason in str(info.value)


def test_jsonl_list(tmp_path):
    path = _write(
        tmp_path / "list.jsonl",
        '{"path": "a.mp4", "label": "beam"}\n\n{"path": "b.mp4", "label": "vault", "start": 1, "end": 2.5}\n',
    )
    assert read_jsonl_list(path) == VideoList([Sample("a.mp4", 0), Sample("b.mp4", 1, 1.0, 2.5)], ["beam", "vault"])


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ('{"path": "a", "label": 1}\n{"path": "b", "label": 1\n', 2, "invalid JSON"),
        ('["a", 1]\n', 1, "non-empty string 'path'"),
        ('{"path": "a"}\n', 1, "missing 'label'"),
        ('{"path": "a", "label": true}\n', 1, "must be an integer index or a class name"),
        ('{"path": "a", "label": 1, "start": 1}\n', 1, "'start' and 'end' must both be numbers"),
        ('{"path": "a", "label": "x"}\n', 1, "unknown class name 'x'"),
    ],
)
def test_jsonl_list_malformed(tmp_path, text, line, reason):
    path = _write(tmp_path / "bad.jsonl", text)
    with pytest.raises(ListFormatError) as info:
        read_jsonl_list(path, classes=["a", "b"] if "unknown" in reason else None)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert reason in str(info.value)


def test_read_video_list_dispatches_on_content(tmp_path):
    plain = _write(tmp_path / "train.csv", "/root/video/a.mp4 2\r\n/root/video/b.mp4 0\r\n")  # SeFAR style
    expected = VideoList([Sample("/root/video/a.mp4", 2), Sample("/root/video/b.mp4", 0)], ["0", "1", "2"])
    assert read_video_list(plain) == expected
    with pytest.raises(ListFormatError, match=r"train.csv:1: label 2 is out of range for the 2 classes$"):
        read_video_list(plain, classes=["x", "y"])
    csv_list = _write(tmp_path / "list.txt", "path,label\na.mp4,beam\n")
    assert read_video_list(csv_list).classes == ["beam"]
    jsonl = _write(tmp_path / "list.jsonl", '{"path": "a.mp4", "label": 0}\n')
    assert read_video_list(jsonl).samples == [Sample("a.mp4", 0)]
