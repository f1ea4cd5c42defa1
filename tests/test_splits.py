"""Labeled lists, reproducible labeled/unlabeled splits and path resolution (encoder/data/splits.py)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from common.errors import ConfigError, DataError, ListFormatError
from encoder.data.splits import (
    Sample,
    Split,
    make_split,
    read_samples,
    read_split,
    resolve_paths,
    split_list,
    write_samples,
    write_split,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SEFAR_99 = SHARED / "sefar-gymqa" / "all99_5" / "labeled.csv"
needs_shared = pytest.mark.skipif(not SEFAR_99.exists(), reason="real SeFAR lists not found in ../shared/data")


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def _samples(counts: dict[int, int]) -> list[Sample]:
    return [Sample(f"/v/c{label}_{i}.mp4", label) for label, n in counts.items() for i in range(n)]


def test_read_samples_accepts_crlf_commas_trims_comments_and_header(tmp_path):
    path = _write(
        tmp_path / "list.csv",
        "path,label\r\n# comment\r\n/root/video/a b.mp4 3\r\n\r\nb.mp4,0\r\nc.mp4 2 1.5 4\r\nd.mp4,1,0,2.25\r\n",
    )
    assert read_samples(path) == [
        Sample("/root/video/a b.mp4", 3),
        Sample("b.mp4", 0),
        Sample("c.mp4", 2, 1.5, 4.0),
        Sample("d.mp4", 1, 0.0, 2.25),
    ]


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("a.mp4 1\nb.mp4 x\n", 2, "label 'x' is not an integer"),
        ("a.mp4 1\nb.mp4\n", 2, "expected '<path> <label>'"),
        ("a.mp4 -1\n", 1, "label -1 is negative"),
        ("a.mp4 1 2\n", 1, "expected '<path> <label>' or '<path> <label> <start> <end>'"),
        ("a.mp4 1 5 2\n", 1, "need 0 <= start < end"),
        ("a.mp4 1\n\na.mp4 2\n", 3, "duplicate of line 1"),
    ],
)
def test_read_samples_reports_file_line_and_reason(tmp_path, text, line, reason):
    path = _write(tmp_path / "bad.txt", text)
    with pytest.raises(ListFormatError) as info:
        read_samples(path)
    assert info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert reason in str(info.value)


def test_read_samples_rejects_empty_and_non_utf8(tmp_path):
    empty = _write(tmp_path / "empty.txt", "\n# nothing\n")
    with pytest.raises(ListFormatError, match="no samples"):
        read_samples(empty)
    assert read_samples(empty, allow_empty=True) == []
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="not UTF-8"):
        read_samples(binary)


def test_write_samples_round_trip_is_atomic(tmp_path):
    samples = [Sample("x/a.mp4", 0), Sample("b.mp4", 7, 0.5, 2.0)]
    path = tmp_path / "sub" / "list.txt"
    write_samples(path, samples)
    assert read_samples(path) == samples
    assert path.read_text() == "x/a.mp4 0\nb.mp4 7 0.5 2\n"
    assert [p.name for p in path.parent.iterdir()] == ["list.txt"]  # no temp file left behind


def test_uniform_split_is_reproducible_and_partitions(tmp_path):
    samples = _samples({0: 30, 1: 50, 2: 20})
    a = make_split(samples, 0.1, seed=3)
    assert make_split(samples, 0.1, seed=3) == a
    assert make_split(samples, 0.1, seed=4) != a
    assert len(a.labeled) == 10 and len(a.unlabeled) == 90
    assert sorted(map(str, a.labeled + a.unlabeled)) == sorted(map(str, samples))
    order = {s: i for i, s in enumerate(samples)}
    assert [order[s] for s in a.labeled] == sorted(order[s] for s in a.labeled)  # source order kept


def test_stratified_split_gives_every_class_a_labeled_clip():
    samples = _samples({0: 200, 1: 3, 2: 1, 3: 40})
    split = make_split(samples, 0.05, seed=0, method="stratified")
    per_class = Counter(s.label for s in split.labeled)
    assert per_class == {0: 10, 1: 1, 2: 1, 3: 2}
    assert not set(split.labeled) & set(split.unlabeled)
    assert len(split.labeled) + len(split.unlabeled) == len(samples)


@pytest.mark.parametrize(
    ("ratio", "method", "match"),
    [(0.0, "uniform", "ratio=0.0"), (1.0, "uniform", "ratio=1.0"), (0.5, "random", "method='random'")],
)
def test_make_split_rejects_bad_arguments(ratio, method, match):
    with pytest.raises(ConfigError, match=match):
        make_split(_samples({0: 4}), ratio, method=method)


def test_write_and_read_split_folder(tmp_path):
    samples = _samples({0: 6, 1: 4})
    src = tmp_path / "train.txt"
    write_samples(src, samples)
    split = split_list(src, tmp_path / "split", 0.3, seed=1, method="stratified")
    meta = json.loads((tmp_path / "split" / "split.json").read_text())
    assert meta == {
        "ratio": 0.3,
        "seed": 1,
        "method": "stratified",
        "source": str(src),
        "num_labeled": 3,
        "num_unlabeled": 7,
        "labeled_per_class": {"0": 2, "1": 1},
    }
    assert read_split(tmp_path / "split") == split
    # a tampered list no longer matches the recorded counts
    write_samples(tmp_path / "split" / "labeled.txt", split.labeled[:1])
    with pytest.raises(DataError, match=r"split\.json: counts \(3, 7\)"):
        read_split(tmp_path / "split")


def test_read_split_needs_split_json(tmp_path):
    write_split(tmp_path, Split([Sample("a", 0)], []), ratio=0.5, seed=0, method="uniform")
    assert read_split(tmp_path).unlabeled == []
    (tmp_path / "split.json").unlink()
    with pytest.raises(DataError, match="split.json: missing"):
        read_split(tmp_path)


def test_resolve_paths_maps_absolute_by_basename_and_joins_relative(tmp_path):
    samples = [
        Sample("/root/video/X_E_000001_000002_A_0001_0002.mp4", 4),
        Sample("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0, 1.0, 2.0),
        Sample("C:\\data\\clips\\c.mp4", 1),
    ]
    out = resolve_paths(samples, tmp_path)
    assert out == [
        Sample(str(tmp_path / "X_E_000001_000002_A_0001_0002.mp4"), 4),
        Sample(str(tmp_path / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g08_c01.avi"), 0, 1.0, 2.0),
        Sample(str(tmp_path / "c.mp4"), 1),
    ]


@needs_shared
def test_real_sefar_labeled_list_reads_and_resolves(tmp_path):
    samples = read_samples(SEFAR_99)
    assert len(samples) == 1316
    assert all(s.path.startswith("/root/video/") and s.path.endswith(".mp4") for s in samples)
    assert {s.label for s in samples} <= set(range(99))
    first = resolve_paths(samples[:1], tmp_path)[0]
    assert first.path == str(tmp_path / "Z0bBRwAzKe0_E_004093_004127_A_0010_0012.mp4")
    assert first.label == 74


def test_cli_split_writes_reproducible_folder(tmp_path, capsys):
    from sefar.cli import main

    src = tmp_path / "train.txt"
    write_samples(src, _samples({0: 8, 1: 2}))
    args = ["data", "split", str(src), "--out", str(tmp_path / "s"), "--ratio", "0.25", "--seed", "2"]
    assert main(args + ["--method", "stratified"]) == 0
    assert capsys.readouterr().out.startswith("3 labeled, 7 unlabeled clips written to ")
    assert read_split(tmp_path / "s") == make_split(read_samples(src), 0.25, seed=2, method="stratified")
    assert main(args[:-4] + ["--ratio", "1.5"]) == 2
    assert "error: ratio=1.5 must be in (0, 1)" in capsys.readouterr().err
