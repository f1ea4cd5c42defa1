"""FineDiving annotations, split keys, frame folders and the restricted unpickler (encoder/data/finediving.py)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from common.errors import DataError
from encoder.data.finediving import (
    DiveAnnotation,
    FrameClip,
    action_classes,
    frame_clip,
    load_pickle,
    read_coarse_annotations,
    read_finediving,
    read_split_keys,
)
from encoder.data.splits import Sample

VIDEO = "FINADivingWorldCup2021_Men3m_final_r1"


def _dump(path: Path, obj: object, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def _coarse() -> dict:
    """Three dives with the fields of the release, numpy values inside like the real file."""
    return {
        (VIDEO, 0): {"action_type": "5253B", "dive_score": np.float64(76.5), "difficulty": 3.4,
                     "start_frame": np.int64(489), "end_frame": 592, "judge_scores": [7.5, 7.5, 8.0],
                     "steps_transit_frames": np.array([12.0, 40.0])},
        (VIDEO, 1): {"action_type": "107B", "dive_score": 80.0, "difficulty": 3.0, "start_frame": 700,
                     "end_frame": 790},
        ("FullMenSynchronised10mPlatform_Tokyo2020Replays_2", 16): {"action_type": "5253b", "start_frame": 10,
                                                                     "end_frame": 11},
    }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_load_pickle_admits_containers_and_numpy(tmp_path, protocol):
    obj = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.int64(3), "b": b"\x00\x01", "t": (1, 2.5),
           "set": {1, 2}, "f": frozenset({"x"}), "c": 1j, "ba": bytearray(b"z"), "d": np.dtype("f8")}
    loaded = load_pickle(_dump(tmp_path / "ok.pkl", obj, protocol))
    np.testing.assert_array_equal(loaded.pop("a"), obj.pop("a"))
    assert loaded == obj


class _RunsShell:
    """Unpickling this calls os.system; the restricted loader must never do it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evals:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w')",))


@pytest.mark.parametrize(
    ("payload", "name"), [(_RunsShell, f"{os.system.__module__}.system"), (_Evals, "builtins.eval")]
)
def test_malicious_pickle_is_refused_without_running(tmp_path, payload, name):
    marker = tmp_path / "pwned"
    path = _dump(tmp_path / "FineDiving_coarse_annotation.pkl", {(VIDEO, 0): payload(marker)})
    with pytest.raises(DataError) as info:
        read_coarse_annotations(path)
    assert str(info.value).startswith(f"{path}: unsafe pickle: it references {name}, which is not")
    assert not marker.exists()


def test_pickle_of_arbitrary_class_and_garbage_are_refused(tmp_path):
    path = _dump(tmp_path / "obj.pkl", [DiveAnnotation("v", 0, "107b", 0, 1)])
    with pytest.raises(DataError, match=r"unsafe pickle: it references encoder\.data\.finediving\.DiveAnnotation"):
        load_pickle(path)
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(DataError, match=r"junk\.pkl: not a valid pickle"):
        load_pickle(junk)
    truncated = tmp_path / "cut.pkl"
    truncated.write_bytes(pickle.dumps(_coarse())[:40])
    with pytest.raises(DataError, match=r"cut\.pkl: not a valid pickle"):
        load_pickle(truncated)


def test_read_coarse_annotations_normalises(tmp_path):
    annotations = read_coarse_annotations(_dump(tmp_path / "coarse.pkl", _coarse()))
    first = annotations[(VIDEO, 0)]
    assert first == DiveAnnotation(VIDEO, 0, "5253b", 489, 592, 76.5, 3.4)
    assert first.num_frames == 104
    assert annotations[("FullMenSynchronised10mPlatform_Tokyo2020Replays_2", 16)].dive_score is None
    assert action_classes(annotations) == ["107b", "5253b"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ([1, 2], "expected a non-empty dict"),
        ({("v", "x"): {}}, "expected a (video_name, index) key, got ('v', 'x')"),
        ({("v", 0): {"action_type": "107B", "start_frame": 5}}, "entry ('v', 0): missing field(s) end_frame"),
        ({("v", 0): {"action_type": "107B", "start_frame": 9, "end_frame": 5}}, "bad frames 9..5"),
        ({("v", 0): ("107B", 80.0, 3.0)}, "expected a dict of fields, got tuple"),
    ],
)
def test_read_coarse_annotations_rejects_bad_entries(tmp_path, data, reason):
    path = _dump(tmp_path / "coarse.pkl", data)
    with pytest.raises(DataError) as info:
        read_coarse_annotations(path)
    assert str(info.value) == f"{path}: {info.value.reason}"
    assert reason in info.value.reason


def test_read_split_keys(tmp_path):
    keys = read_split_keys(_dump(tmp_path / "train_split.pkl", [(VIDEO, 1), [VIDEO, np.int64(0)]]))
    assert keys == [(VIDEO, 1), (VIDEO, 0)]
    with pytest.raises(DataError, match=r"key \('v', 1\) is listed twice"):
        read_split_keys(_dump(tmp_path / "dup.pkl", [("v", 1), ("v", 1)]))
    with pytest.raises(DataError, match="item 1: expected a"):
        read_split_keys(_dump(tmp_path / "bad.pkl", [("v", 1), "v"]))


def test_frame_clip_paths(tmp_path):
    clip = frame_clip(tmp_path, DiveAnnotation(VIDEO, 11, "107b", 14425, 14427))
    assert clip == FrameClip(tmp_path / VIDEO / "11", 14425, 14427)
    assert clip.num_frames == 3
    assert [p.name for p in clip.frame_paths()] == ["14425.jpg", "14426.jpg", "14427.jpg"]


def test_read_finediving_builds_samples(tmp_path):
    coarse = _dump(tmp_path / "coarse.pkl", _coarse())
    split = _dump(tmp_path / "test_split.pkl", [("FullMenSynchronised10mPlatform_Tokyo2020Replays_2", 16), (VIDEO, 1)])
    vl = read_finediving(coarse, split)
    assert vl.classes == ["107b", "5253b"]
    assert vl.samples == [Sample("FullMenSynchronised10mPlatform_Tokyo2020Replays_2/16", 1), Sample(f"{VIDEO}/1", 0)]
    rooted = read_finediving(coarse, split, frames_root=tmp_path / "frames")
    assert rooted.samples[1].path == str(tmp_path / "frames" / VIDEO / "1")
    missing = _dump(tmp_path / "bad_split.pkl", [(VIDEO, 9)])
    with pytest.raises(DataError, match=r"bad_split\.pkl: key \('FINADiving.*', 9\) has no entry in coarse\.pkl"):
        read_finediving(coarse, missing)
