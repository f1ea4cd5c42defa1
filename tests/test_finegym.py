"""FineGym parsers: the real release files (when present) and small malformed fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import ListFormatError
from common.finegym import (
    Category,
    ClipId,
    Hierarchy,
    write_level_lists,
    default_paths,
    event_of_set,
    parse_clip_id,
    read_annotations,
    read_categories,
    read_element_list,
    read_qtree,
    read_set_categories,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FINEGYM = DATA / "finegym"
needs_finegym = pytest.mark.skipif(
    not FINEGYM.is_dir(), reason="real FineGym lists not found at ../shared/data/finegym beside the checkout"
)


# --------------------------------------------------------------------------- real files


@needs_finegym
@pytest.mark.parametrize("name, count, events", [
    ("gym99_categories", 99, {"VT": 6, "FX": 35, "BB": 33, "UB": 25}),
    ("gym288_categories", 288, {"VT": 40, "FX": 91, "BB": 101, "UB": 56}),
    ("gym530_categories", 530, {"VT": 67, "FX": 137, "BB": 193, "UB": 133}),
])
def test_real_categories(name: str, count: int, events: dict[str, int]) -> None:
    categories = read_categories(default_paths(FINEGYM)[name])
    assert [c.label for c in categories] == list(range(count))
    assert {e: sum(c.event == e for c in categories) for e in events} == events
    assert all(c.name == c.name.strip() and not c.name.startswith(f"({c.event})") for c in categories)
    if name == "gym530_categories":
        assert all(c.label == c.glabel for c in categories)


@needs_finegym
def test_real_gym99_first_line_and_padding() -> None:
    categories = read_categories(default_paths(FINEGYM)["gym99_categories"])
    first = categories[0]
    assert (first.label, first.glabel, first.set_id, first.event) == (0, 1, 1, "VT")
    assert first.full_name.startswith("(VT) round-off, flic-flac with 0.5 turn on")
    assert categories[16].name == "stag jump"  # padded with spaces in the file


@needs_finegym
def test_real_set_categories() -> None:
    sets = read_set_categories(default_paths(FINEGYM)["set_categories"])
    assert len(sets) == 15
    assert list(sets) == [1, 21, 22, 23, 24, 25, 31, 32, 33, 34, 35, 41, 42, 43, 44]
    assert sets[21] == "FX_leap_jump_hop"


@needs_finegym
@pytest.mark.parametrize("name, count, classes", [
    ("gym99_train", 26320, 99), ("gym99_val", 8521, 99), ("gym288_train", 29334, 288), ("gym288_val", 9646, 288),
])
def test_real_element_lists(name: str, count: int, classes: int) -> None:
    items = read_element_list(default_paths(FINEGYM)[name])
    assert len(items) == count
    assert len({label for _, label in items}) == classes
    assert max(label for _, label in items) == classes - 1


@needs_finegym
def test_real_qtree() -> None:
    qtree = read_qtree(default_paths(FINEGYM)["qtree"])
    assert sorted(qtree) == list(range(530))
    entry = qtree[0]
    assert entry.bt_code == "1111111" and len(entry.questions) == 7
    assert entry.questions[0] == "round-off onto the springboard?"
    assert entry.code == ("6", "00") and entry.answers == (True,) * 7
    assert qtree[529].code == ("6", "101") and qtree[529].answers == (False, False, True, False)


@needs_finegym
def test_real_hierarchy_counts() -> None:
    paths = default_paths(FINEGYM)
    hierarchy = Hierarchy(read_categories(paths["gym99_categories"]), read_set_categories(paths["set_categories"]))
    assert hierarchy.events == ["VT", "FX", "BB", "UB"]
    assert hierarchy.sets("FX") == [21, 22, 24, 25]  # Gym99 has no side salto class
    assert len(hierarchy.sets()) == 14
    ub = hierarchy.subset("UB")
    assert len(ub.categories) == 25 and sorted(ub.label_map.values()) == list(range(25))
    circles = hierarchy.subset(set_id=41)
    assert len(circles.categories) == 15 and circles.label_map[74] == 0
    train = read_element_list(paths["gym99_train"])
    kept = ub.filter(train)
    assert len(kept) == sum(1 for _, label in train if label in ub.label_map)
    assert {label for _, label in kept} == set(range(25))


# --------------------------------------------------------------------------- clip ids and sets


def test_event_of_set() -> None:
    assert event_of_set(1) == "VT"
    assert [event_of_set(s) for s in (21, 25, 31, 35, 41, 44)] == ["FX", "FX", "BB", "BB", "UB", "UB"]
    for bad in (0, 5, 20, 50, 99):
        with pytest.raises(ValueError, match="not a FineGym set"):
            event_of_set(bad)


def test_parse_clip_id_round_trip_with_underscores() -> None:
    text = "a_b-c_E_000123_004567_A_0012_0034"
    clip = parse_clip_id(text)
    assert clip == ClipId("a_b-c", 123, 4567, 12, 34)
    assert clip.event_key == "E_000123_004567" and clip.element_key == "A_0012_0034"
    assert str(clip) == text


@pytest.mark.parametrize("bad", [
    "abc_E_12_34_A_0001_0002", "abc_E_000001_000002_A_0001", "_E_000001_000002_A_0001_0002",
    "abc_E_000009_000002_A_0001_0002", "abc_E_000001_000002_A_0005_0002", "a b_E_000001_000002_A_0001_0002",
])
def test_parse_clip_id_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="clip id"):
        parse_clip_id(bad)


# --------------------------------------------------------------------------- malformed fixtures


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def test_categories_fixture_both_formats(tmp_path: Path) -> None:
    text = "Clabel:   1; set: 21; Glabel:  7; (FX) b  \r\n\r\nClabel: 0; set: 1; Glabel: 3; (VT) a\r\n"
    clabel = _write(tmp_path / "c.txt", text)
    assert read_categories(clabel) == [Category(0, 3, 1, "VT", "a"), Category(1, 7, 21, "FX", "b")]
    glabel = _write(tmp_path / "g.txt", "Glabel: 0; set: 41; (UB) x\nGlabel: 1; set: 44; (UB) y\n")
    assert [c.label for c in read_categories(glabel)] == [0, 1]


@pytest.mark.parametrize("text, line, reason", [
    ("Clabel: 0; set: 1; Glabel: 0; (VT) a\nnonsense\n", 2, "expected 'Clabel"),
    ("Clabel: 0; set: 21; Glabel: 0; (VT) a\n", 1, "does not match set 21"),
    ("Clabel: 0; set: 7; Glabel: 0; (VT) a\n", 1, "not a FineGym set"),
    ("Clabel: 0; set: 1; Glabel: 0; (VT) a\nClabel: 0; set: 1; Glabel: 1; (VT) b\n", 2, "label 0 repeats line 1"),
    ("Clabel: 0; set: 1; Glabel: 5; (VT) a\nClabel: 1; set: 1; Glabel: 5; (VT) b\n", 2, "Glabel 5 repeats"),
    ("Clabel: 0; set: 1; Glabel: 0; (VT) a\nGlabel: 1; set: 1; (VT) b\n", 2, "mixes"),
    ("Clabel: 0; set: 1; Glabel: 0; (VT)   \n", 1, "empty element name"),
])
def test_categories_malformed(tmp_path: Path, text: str, line: int, reason: str) -> None:
    path = _write(tmp_path / "cats.txt", text)
    with pytest.raises(ListFormatError, match=reason) as info:
        read_categories(path)
    assert info.value.line == line and str(info.value).startswith(f"{path}:{line}: ")


def test_categories_label_gap_and_empty(tmp_path: Path) -> None:
    with pytest.raises(ListFormatError, match=r"labels must be 0..1; missing \[1\]"):
        text = "Clabel: 0; set: 1; Glabel: 0; (VT) a\nClabel: 2; set: 1; Glabel: 1; (VT) b\n"
        read_categories(_write(tmp_path / "gap.txt", text))
    with pytest.raises(ListFormatError, match="no categories"):
        read_categories(_write(tmp_path / "empty.txt", "\n\n"))


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ListFormatError, match="not UTF-8"):
        read_element_list(tmp_path / "bin.txt")


def test_set_categories_fixture(tmp_path: Path) -> None:
    sets = read_set_categories(_write(tmp_path / "s.txt", "set: 1; vault\r\nset: 21; FX_turns \r\n"))
    assert sets == {1: "vault", 21: "FX_turns"}
    for text, line, reason in [("set: 1; vault\nset 2 x\n", 2, "expected 'set"),
                               ("set: 1; a\nset: 1; b\n", 2, "listed twice"),
                               ("set: 60; x\n", 1, "not a FineGym set")]:
        with pytest.raises(ListFormatError, match=reason) as info:
            read_set_categories(_write(tmp_path / "bad.txt", text))
        assert info.value.line == line


def test_element_list_fixture(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.txt", "x_y_E_000001_000009_A_0001_0002 3\r\n\r\nz-q_E_000001_000009_A_0003_0004 0\r\n")
    assert read_element_list(path) == [("x_y_E_000001_000009_A_0001_0002", 3), ("z-q_E_000001_000009_A_0003_0004", 0)]


@pytest.mark.parametrize("text, line, reason", [
    ("x_E_000001_000009_A_0001_0002\n", 1, "expected '<clip id> <label>'"),
    ("x_E_000001_000009_A_0001_0002 3\nx_E_000001_000009_A_0001_0003 -1\n", 2, "expected '<clip id> <label>'"),
    ("x_E_000001_000009_A_0001_0002 3 4\n", 1, "expected '<clip id> <label>'"),
    ("clip.mp4 3\n", 1, "does not match"),
    ("x_E_000001_000009_A_0001_0002 3\n\nx_E_000001_000009_A_0001_0002 3\n", 3, "repeats line 1"),
])
def test_element_list_malformed(tmp_path: Path, text: str, line: int, reason: str) -> None:
    with pytest.raises(ListFormatError, match=reason) as info:
        read_element_list(_write(tmp_path / "l.txt", text))
    assert info.value.line == line


def test_qtree_fixture_and_errors(tmp_path: Path) -> None:
    good = {"0": {"BTcode": "10", "questions": ["Salto?", " With turn? "], "code": "1.101"}}
    path = _write(tmp_path / "q.json", json.dumps(good))
    assert read_qtree(path)[0].questions == ("Salto?", "With turn?")
    cases = [
        ({"0": {"BTcode": "1", "questions": ["a?", "b?"], "code": "1.1"}}, "1 digits for 2 questions"),
        ({"0": {"BTcode": "12", "questions": ["a?", "b?"], "code": "1.1"}}, "string of 0/1"),
        ({"0": {"BTcode": "1", "questions": ["a?"]}}, "needs 'BTcode'"),
        ({"x": {"BTcode": "1", "questions": ["a?"], "code": "1"}}, "not a Glabel"),
        ({"0": {"BTcode": "1", "questions": ["a?"], "code": "v1"}}, "code must look like"),
        ([1, 2], "JSON object"),
    ]
    for data, reason in cases:
        with pytest.raises(ListFormatError, match=reason):
            read_qtree(_write(tmp_path / "bad.json", json.dumps(data)))
    with pytest.raises(ListFormatError, match="invalid JSON") as info:
        read_qtree(_write(tmp_path / "broken.json", '{\n"0": \n'))
    assert info.value.line is not None


ANNOTATION = {
    "ab_c-d": {
        "E_000010_000050": {
            "event": 1, "timestamps": [[10.2, 50.7]],
            "segments": {"A_0003_0008": {"stages": 3, "timestamps": [[3.1, 4.0], [4.0, 6.2], [6.2, 8.9]]}},
        },
        "E_000100_000200": {"event": 4, "timestamps": [[100.0, 200.5]], "segments": None},
    },
    "zz": {
        "E_000001_000030": {
            "event": 2, "timestamps": [[1, 30]],
            "segments": {"A_0001_0002": {"stages": 1, "timestamps": [[1.5, 2.5]]},
                         "A_0010_0012": {"stages": 1, "timestamps": [[10.0, 12.25]]}},
        }
    },
}


def test_read_annotations_fixture(tmp_path: Path) -> None:
    elements = read_annotations(_write(tmp_path / "a.json", json.dumps(ANNOTATION)))
    assert [e.clip_id for e in elements] == [
        "ab_c-d_E_000010_000050_A_0003_0008", "zz_E_000001_000030_A_0001_0002", "zz_E_000001_000030_A_0010_0012",
    ]
    vault = elements[0]
    assert (vault.youtube_id, vault.event, vault.stages) == ("ab_c-d", "VT", 3)
    assert (vault.event_start, vault.event_end, vault.start, vault.end) == (10.2, 50.7, 3.1, 8.9)
    assert elements[2].event == "FX" and elements[2].segments == ((10.0, 12.25),)
    assert all(str(parse_clip_id(e.clip_id)) == e.clip_id for e in elements)


@pytest.mark.parametrize("mutate, reason", [
    (lambda d: d["zz"]["E_000001_000030"].update(event=7), "'event' must be one of"),
    (lambda d: d["zz"]["E_000001_000030"].update(timestamps=[[1, 2], [3, 4]]), "abs_start, abs_end"),
    (lambda d: d["zz"]["E_000001_000030"].update(segments=[1]), "object or null"),
    (lambda d: d["zz"].update({"E_1_2": d["zz"]["E_000001_000030"]}), "E_XXXXXX_YYYYYY"),
    (lambda d: d["zz"]["E_000001_000030"]["segments"].update(A_1_2={}), "A_ZZZZ_WWWW"),
    (lambda d: d["zz"]["E_000001_000030"]["segments"]["A_0001_0002"].update(timestamps=[[3, 1]]), "needs 'stages'"),
    (lambda d: d["zz"]["E_000001_000030"]["segments"]["A_0001_0002"].update(stages=0), "needs 'stages'"),
    (lambda d: d.update(zz=[]), "expected an object"),
])
def test_read_annotations_malformed(tmp_path: Path, mutate, reason: str) -> None:
    data = json.loads(json.dumps(ANNOTATION))
    mutate(data)
    with pytest.raises(ListFormatError, match=reason):
        read_annotations(_write(tmp_path / "a.json", json.dumps(data)))


def test_hierarchy_fixture() -> None:
    categories = [Category(0, 0, 1, "VT", "v"), Category(1, 5, 21, "FX", "f1"), Category(2, 6, 22, "FX", "f2"),
                  Category(3, 9, 41, "UB", "u")]
    hierarchy = Hierarchy(categories[::-1], {1: "vault"})
    assert hierarchy.events == ["VT", "FX", "UB"]
    assert hierarchy.sets() == [1, 21, 22, 41] and hierarchy.sets("FX") == [21, 22]
    assert [c.label for c in hierarchy.elements("FX")] == [1, 2]
    subset = hierarchy.subset("FX", 22)
    assert subset.categories == [categories[2]] and subset.label_map == {2: 0}
    assert subset.filter([("a", 2), ("b", 1), ("c", 2)]) == [("a", 0), ("c", 0)]
    with pytest.raises(ValueError, match="unknown event 'BB'"):
        hierarchy.subset("BB")
    with pytest.raises(ValueError, match="unknown set 31"):
        hierarchy.subset(set_id=31)
    with pytest.raises(ValueError, match="belongs to UB"):
        hierarchy.subset("FX", 41)


def test_hierarchy_level_labels() -> None:
    categories = [Category(0, 0, 1, "VT", "v"), Category(1, 5, 21, "FX", "f1"), Category(2, 6, 22, "FX", "f2"),
                  Category(3, 9, 41, "UB", "u"), Category(4, 10, 21, "FX", "f3")]
    hierarchy = Hierarchy(categories, {1: "vault", 21: "FX_leaps"})
    assert hierarchy.level_labels("set") == ({0: 0, 1: 1, 2: 2, 3: 3, 4: 1}, ["vault", "FX_leaps", "set 22", "set 41"])
    assert hierarchy.level_labels("event") == ({0: 0, 1: 1, 2: 1, 3: 2, 4: 1}, ["VT", "FX", "UB"])
    mapping, names = hierarchy.level_labels("element")
    assert mapping == {i: i for i in range(5)} and names[1] == "(FX) f1"
    with pytest.raises(ValueError, match="unknown level 'group'"):
        hierarchy.level_labels("group")


def test_write_level_lists(tmp_path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "categories.txt").write_text(
        "Clabel: 0; set: 21; Glabel: 0; (FX) a\nClabel: 1; set: 22; Glabel: 1; (FX) b\n"
        "Clabel: 2; set: 21; Glabel: 2; (FX) c\nClabel: 3; set: 41; Glabel: 3; (UB) d\n"
    )
    x, y, z, w = (f"abcdefghijk_E_000010_000020_A_000{i}_000{i + 1}" for i in range(4))
    (root / "train_element.txt").write_text(f"{x} 0\n{y} 1\n{z} 2\n")
    (root / "val_element.txt").write_text(f"{w} 3\n")
    names = write_level_lists(root, tmp_path / "sets", "set")
    assert names == ["set 21", "set 22", "set 41"]
    assert (tmp_path / "sets" / "train_element.txt").read_text() == f"{x} 0\n{y} 1\n{z} 0\n"
    assert (tmp_path / "sets" / "val_element.txt").read_text() == f"{w} 2\n"
    assert write_level_lists(root, tmp_path / "events", "event") == ["FX", "UB"]
    (root / "val_element.txt").write_text(f"{w} 7\n")
    with pytest.raises(ListFormatError, match=r"val_element.txt: labels \[7\] are not in"):
        write_level_lists(root, tmp_path / "bad", "set")


def test_relabel_cli(tmp_path, capsys) -> None:
    from sefar.cli import main

    root = tmp_path / "data"
    root.mkdir()
    (root / "categories.txt").write_text("Clabel: 0; set: 21; Glabel: 0; (FX) a\nClabel: 1; set: 41; Glabel: 1; (UB) b\n")
    (root / "set_categories.txt").write_text("set: 21; FX_leaps\nset: 41; UB_circles\n")
    clip = "abcdefghijk_E_000010_000020_A_0001_0002"
    (root / "train_element.txt").write_text(f"{clip} 1\n")
    assert main(["data", "relabel", str(root), "--out", str(tmp_path / "ev"), "--level", "event",
                 "--lists", "train_element.txt"]) == 0
    assert (tmp_path / "ev" / "train_element.txt").read_text() == f"{clip} 1\n"
    assert "2 event classes: 0 FX, 1 UB" in capsys.readouterr().out
