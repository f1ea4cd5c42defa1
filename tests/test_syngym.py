"""SynGym: FineGym-format files, decodable videos, determinism, and the properties that make it fine-grained."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from encoder.data import syngym
from common.errors import ConfigError
from common.finegym import (
    Hierarchy,
    parse_clip_id,
    read_annotations,
    read_categories,
    read_element_list,
    read_set_categories,
)
from encoder.data.syngym import CLASSES, SIZES, VERSION, clip_params, direction_pairs, render_clip
from encoder.data.syngym_motion import STAND, Performance, element_track, figure_motion, glide, orient
from encoder.data.syngym_render import J, Track, place, rasterise, segments_2d, world_joints
from encoder.data.video import read_frames, video_info

TINY = SIZES["tiny"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny SynGym (seed 0) with one broadcast video, rendered in this process."""
    out = tmp_path_factory.mktemp("syngym") / "a"
    return out, syngym.synthesize(out, seed=0, size="tiny", workers=1, broadcast=1)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- taxonomy

def test_hierarchy_has_enough_fine_grained_classes():
    assert len(CLASSES) >= 24
    assert [c.label for c in CLASSES] == list(range(len(CLASSES)))
    assert len({c.event for c in CLASSES}) >= 3
    assert len({c.name for c in CLASSES if c.event == "FX"}) == sum(c.event == "FX" for c in CLASSES)
    pairs = direction_pairs()
    assert len(pairs) >= 8
    for forward, backward in pairs:
        f, b = CLASSES[forward], CLASSES[backward]
        assert (f.direction, b.direction) == (1, -1)
        assert f.name.replace("forward", "backward") == b.name
        assert (f.motion, f.shape, f.rotations, f.turns) == (b.motion, b.shape, b.rotations, b.turns)


def test_category_lines_are_spaced_like_gym99(shared_data):
    lines = (shared_data / "finegym" / "gym99_categories.txt").read_text().splitlines()
    for line in lines:
        m = re.fullmatch(r"Clabel:\s*(\d+); set:\s*(\d+); Glabel:\s*(\d+); \((\w+)\) (.*)", line)
        assert syngym.category_line(int(m[1]), int(m[2]), int(m[3]), m[4], m[5]) == line


# ---------------------------------------------------------------------------------------------- files

def test_categories_and_sets_parse_with_the_finegym_readers(tiny):
    out, _ = tiny
    categories = read_categories(out / "categories.txt")
    sets = read_set_categories(out / "set_categories.txt")
    def fields(c):
        return (c.label, c.set_id, c.event, c.name)

    assert [fields(c) for c in categories] == [fields(c) for c in CLASSES]
    assert {c.set_id for c in categories} == set(sets)
    hierarchy = Hierarchy(categories, sets)
    assert hierarchy.events == ["FX", "BB", "UB"]
    assert all(len(hierarchy.elements(set_id=s)) >= 2 for s in sets)  # every set has hard siblings


def test_element_lists_are_balanced_and_match_the_annotation(tiny):
    out, summary = tiny
    train = read_element_list(out / "train_element.txt")
    val = read_element_list(out / "val_element.txt")
    assert Counter(label for _, label in train) == {c.label: TINY.train_per_class for c in CLASSES}
    assert Counter(label for _, label in val) == {c.label: TINY.val_per_class for c in CLASSES}
    assert summary["splits"]["train"]["clips"] == len(train) and summary["splits"]["val"]["clips"] == len(val)
    train_videos = {parse_clip_id(c).youtube_id for c, _ in train}
    assert train_videos.isdisjoint(parse_clip_id(c).youtube_id for c, _ in val)  # splits share no video

    annotations = {a.clip_id: a for a in read_annotations(out / "annotation.json")}
    assert set(annotations) == {c for c, _ in train + val}
    for clip_id, label in train + val:
        a, cid = annotations[clip_id], parse_clip_id(clip_id)
        assert a.event == CLASSES[label].event and a.stages == 1
        assert (cid.event_start, cid.event_end) == (int(a.event_start), int(a.event_end))
        assert (cid.element_start, cid.element_end) == (int(a.start), int(a.end))
        assert 0 <= a.start < a.end <= a.event_end - a.event_start


def test_videos_decode_with_the_annotated_length(tiny):
    out, _ = tiny
    annotations = {a.clip_id: a for a in read_annotations(out / "annotation.json")}
    for clip_id, _ in read_element_list(out / "train_element.txt"):
        info = video_info(out / "videos" / f"{clip_id}.mp4")
        a = annotations[clip_id]
        assert TINY.min_frames <= info.num_frames <= TINY.max_frames
        assert info.num_frames == round((a.end - a.start) * TINY.fps)
        assert (info.width, info.height, info.fps) == (TINY.frame_size, TINY.frame_size, TINY.fps)
    frames = read_frames(out / "videos" / f"{clip_id}.mp4")
    assert frames.dtype == np.uint8 and frames.shape == (info.num_frames, TINY.frame_size, TINY.frame_size, 3)
    assert frames.std() > 10  # a scene, not a blank


def test_manifest_digest_covers_every_file_and_no_temporaries_remain(tiny):
    out, summary = tiny
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == {k: v for k, v in summary.items() if k not in ("out", "workers", "wall_time_s")}
    files = {name: data for name, data in _tree(out).items() if name != "manifest.json"}
    content = "".join(f"{name} {hashlib.sha256(data).hexdigest()}\n" for name, data in sorted(files.items()))
    assert manifest["content_sha256"] == hashlib.sha256(content.encode()).hexdigest()
    assert manifest["files"] == len(files)
    assert not [name for name in files if Path(name).name.startswith(".")]
    assert manifest["num_classes"] == len(CLASSES)
    assert manifest["direction_pairs"] == [list(p) for p in direction_pairs()]
    text = syngym.format_summary(summary)
    assert f"{len(CLASSES)} classes" in text and str(out) in text


def test_same_seed_gives_byte_identical_files_whatever_the_workers(tiny, tmp_path):
    out, summary = tiny
    again = syngym.synthesize(tmp_path / "b", seed=0, size="tiny", workers=2, broadcast=1)
    assert again["content_sha256"] == summary["content_sha256"]
    assert _tree(tmp_path / "b") == _tree(out)


def test_encoding_the_same_frames_again_gives_the_same_bytes(tmp_path):
    """The encoder once read uninitialised memory: the same frames gave other files later in one process."""
    element = CLASSES[5]
    frames = render_clip(element, *clip_params(0, 3, element, SIZES["default"]))
    digests = {syngym.write_video(tmp_path / f"{i}.mp4", [frames], 25) for i in range(12)}
    assert len(digests) == 1


def test_rgb_to_yuv420p_matches_bt601_and_round_trips():
    rng = np.random.default_rng(0)
    flat = np.array([[[0, 0, 0], [255, 255, 255]], [[255, 0, 0], [0, 0, 255]]], np.uint8)  # one 2x2 block
    yuv = syngym.rgb_to_yuv420p(np.tile(flat, (1, 1, 1, 1)))
    assert yuv.shape == (1, 3, 2)
    assert yuv[0, :2].ravel().tolist() == [16, 235, 82, 41]  # BT.601 limited-range luma
    assert yuv[0, 2].tolist() == [(((-38 * 510 - 74 * 255 + 112 * 510 + 512) >> 10) + 128),
                                  (((112 * 510 - 94 * 255 - 18 * 510 + 512) >> 10) + 128)]
    smooth = np.repeat(np.repeat(rng.integers(0, 256, (2, 8, 8, 3)), 2, 1), 2, 2).astype(np.uint8)
    frame = av_frame(syngym.rgb_to_yuv420p(smooth)[0])
    back = frame.to_ndarray(format="rgb24").astype(int)  # FFmpeg's BT.601 decode of our encode
    assert np.abs(back - smooth[0]).mean() < 2.5
    with pytest.raises(ValueError, match="even"):
        syngym.rgb_to_yuv420p(np.zeros((1, 3, 4, 3), np.uint8))


def av_frame(yuv: np.ndarray):
    import av

    return av.VideoFrame.from_ndarray(yuv, format="yuv420p")


_CHILD = """
import json, os, sys
import numpy as np
import torch
torch.set_num_threads(int(sys.argv[2]))
import encoder.data.syngym as sg
out = {}
for index in (0, 7):
    element = sg.CLASSES[index]
    frames = sg.render_clip(element, *sg.clip_params(0, index, element, sg.SIZES["tiny"]))
    frames = np.asarray(torch.from_numpy(frames.copy()).numpy())  # through torch, as a worker would hold them
    out[index] = sg.write_video(os.path.join(sys.argv[1], f"{index}.mp4"), [frames], 25)
print(json.dumps(out))
"""


def _dispatched_numpy_features() -> str:
    from numpy._core import _multiarray_umath as umath

    return " ".join(f for f in umath.__cpu_dispatch__ if umath.__cpu_features__.get(f))


@pytest.mark.parametrize("threads, env", [
    (1, {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}),
    (2, {"OMP_NUM_THREADS": "2", "NPY_DISABLE_CPU_FEATURES": "<dispatched>"}),
])
def test_a_fresh_spawned_process_writes_the_same_bytes(tmp_path, threads, env):
    """Render + encode in this process and in a new one with other thread and numpy SIMD settings."""
    import json
    import os
    import subprocess
    import sys

    env = {k: (_dispatched_numpy_features() if v == "<dispatched>" else v) for k, v in env.items()}
    here = {}
    for index in (0, 7):
        element = CLASSES[index]
        frames = render_clip(element, *clip_params(0, index, element, TINY))
        here[str(index)] = syngym.write_video(tmp_path / f"here{index}.mp4", [frames], 25)
    child = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path), str(threads)], capture_output=True,
                           text=True, env={**os.environ, **env}, cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    assert json.loads(child.stdout.strip().splitlines()[-1]) == here
    for index in (0, 7):
        assert (tmp_path / f"{index}.mp4").read_bytes() == (tmp_path / f"here{index}.mp4").read_bytes()


def test_another_seed_gives_other_clips():
    jobs0, _ = syngym.build_plan(0, TINY)
    jobs1, _ = syngym.build_plan(1, TINY)
    assert [j.clip_id for j in jobs0] != [j.clip_id for j in jobs1]
    element = CLASSES[2]
    a = render_clip(element, *clip_params(0, 0, element, TINY))
    b = render_clip(element, *clip_params(1, 0, element, TINY))
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="size"):
        syngym.synthesize(tmp_path, size="huge")
    with pytest.raises(ConfigError, match="broadcast"):
        syngym.synthesize(tmp_path, size="tiny", broadcast=-1)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a SynGym folder.*notes.txt"):
        syngym.synthesize(tmp_path, size="tiny")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # nothing written, nothing lost


def test_rerun_over_an_earlier_output_leaves_only_the_new_files(tiny, tmp_path):
    out, _ = tiny
    shutil.copytree(out, tmp_path / "c")
    (tmp_path / "c" / "videos" / ".half.mp4.123.tmp").write_bytes(b"killed run")
    summary = syngym.synthesize(tmp_path / "c", seed=1, size="tiny", workers=1)
    files = [name for name in _tree(tmp_path / "c") if name != "manifest.json"]
    assert len(files) == summary["files"] and not (tmp_path / "c" / "broadcast").exists()
    old_ids = {c for c, _ in read_element_list(out / "train_element.txt")}
    assert old_ids.isdisjoint(c for c, _ in read_element_list(tmp_path / "c" / "train_element.txt"))


# ------------------------------------------------------------------------------- fine-grained by design

@pytest.mark.parametrize("pair", direction_pairs()[::3])
def test_backward_is_the_time_reverse_of_forward(pair):
    """Same nuisance stream: the backward clip's poses and (noise-free) frames are the forward ones reversed,
    so any single frame is exactly as likely under either class."""
    forward, backward = CLASSES[pair[0]], CLASSES[pair[1]]
    scene_f, perf_f = clip_params(0, 5, forward, TINY)
    scene_b, perf_b = clip_params(0, 5, backward, TINY)
    assert (scene_f, perf_f) == (scene_b, perf_b)  # nuisances do not depend on the direction
    motion = lambda c: figure_motion(c.motion, c.shape, c.direction, c.rotations, c.turns, perf_f)  # noqa: E731
    np.testing.assert_allclose(motion(backward), motion(forward)[::-1])
    still = dataclasses.replace(scene_f, noise_sigma=0.0, camera_amplitude=0.0)
    np.testing.assert_array_equal(render_clip(backward, still, perf_f), render_clip(forward, still, perf_f)[::-1])


def test_facing_left_is_the_mirror_image_and_faces_the_other_way():
    element = CLASSES[2]  # salto forward tucked
    _, perf = clip_params(0, 0, element, TINY)
    right = figure_motion("salto", "tucked", 1, 1, 0, dataclasses.replace(perf, facing=1))
    left = figure_motion("salto", "tucked", 1, 1, 0, dataclasses.replace(perf, facing=-1))
    np.testing.assert_allclose(left[..., 0], -right[..., 0])
    np.testing.assert_allclose(left[..., 1:], right[..., 1:])
    nose_ahead = right[0, J["nose"], 0] - right[0, J["head"], 0]
    assert nose_ahead > 0  # the front (nose, chest marker) shows which way the figure faces
    assert right[-1, J["pelvis"], 0] > right[0, J["pelvis"], 0]  # a forward salto travels to the front


def _standing_frame(look, facing: int, size: int = 64) -> tuple[np.ndarray, float, slice]:
    """The figure standing (arms up) on a flat grey ground, ``(H, W, 3)`` float, with the column of its torso's
    axis and the rows of its torso."""
    zero = np.zeros(1)
    track = Track(STAND[None], zero, zero, "ground", zero, zero)
    placed = orient(place(track, world_joints(track)), 1, facing)
    canvas = np.full((3, 1, size, size), 128.0, np.float32)
    origin = np.array([[size / 2, 0.8 * size]])  # the figure's x = 0 on the image's vertical midline
    rasterise(canvas, *segments_2d(placed, look, origin))
    axis = origin[0, 0] + look.scale * placed[0, J["pelvis"], 0]
    top, bottom = (origin[0, 1] - look.scale * placed[0, J[name], 1] for name in ("neck", "pelvis"))
    return canvas[:, 0].transpose(1, 2, 0), axis, slice(int(np.ceil(top)), int(np.floor(bottom)))


FRONT_MIN_PIXELS = 6  # accent pixels on the front half of the torso, at the smallest figure (UB, 15 px per unit)
BACK_MAX_PIXELS = 3  # accent-coloured pixels on the back half (anti-aliasing at the axis)


@pytest.mark.parametrize("event", list(syngym.EVENT_CODES))
def test_the_front_of_the_torso_shows_at_64_px_whatever_the_facing(event):
    """v3: the front half of the torso is drawn in the accent colour, far (in colour and luma) from the back."""
    element = next(c for c in CLASSES if c.event == event)
    for index in range(10):
        look = clip_params(0, index, element, SIZES["default"])[0].look
        back = 0.82 * look.leotard  # the torso as drawn (shaded at depth 0)
        assert np.linalg.norm(look.accent - back) >= 100
        assert abs(syngym._luma(look.accent) - syngym._luma(back)) >= 30
        images = {}
        for facing in (1, -1):
            image, axis, rows = _standing_frame(look, facing)
            images[facing] = image
            to_accent = np.linalg.norm(image - look.accent, axis=-1)
            accent = (to_accent < np.linalg.norm(image - back, axis=-1)) & (to_accent < 50)
            front = (np.arange(image.shape[1]) + 0.5 - axis) * facing > 0
            assert accent[rows][:, front].sum() >= FRONT_MIN_PIXELS, (index, facing)
            assert accent[rows][:, ~front].sum() <= BACK_MAX_PIXELS, (index, facing)
        np.testing.assert_allclose(images[-1], images[1][:, ::-1], atol=1e-3)  # facing left is the mirror image


def test_glide_spreads_a_rotation_evenly():
    q = np.linspace(0, 1, 2001)
    for ramp in (0.15, 0.25):
        g = glide(q, ramp)
        assert g[0] == 0 and g[-1] == pytest.approx(1) and np.all(np.diff(g) >= 0)
        assert np.diff(g).max() / np.diff(q).max() == pytest.approx(1 / (1 - ramp), rel=1e-3)
        np.testing.assert_allclose(glide(1 - q, ramp), 1 - g, atol=1e-12)  # time-symmetric


ALIAS_BOUND = 0.10  # at most this fraction of a class's clips may turn 180 degrees between sampled frames


def test_no_class_turns_half_a_turn_between_sampled_frames():
    """v3: at the evaluation sampling (8 segment centres) every class keeps each salto, twist and turn step
    under 180 degrees in at least 90% of its clips (40 clips per class of the default size)."""
    preset = SIZES["default"]
    for element in CLASSES:
        perfs = [clip_params(0, index, element, preset)[1] for index in range(40)]
        fractions = syngym.aliasing(element, perfs, train_draws=2)
        assert fractions["eval"] <= ALIAS_BOUND, (element.name, fractions)
        if element.rotations == 2 or element.turns == 2:  # 720 degrees: spread over nearly the whole clip
            assert fractions["eval_median_max"] < 140, (element.name, fractions)
            assert fractions["fine"] == 1.0  # (f1, f5) spans half the clip: unavoidable, documented


def test_rotation_steps_measure_the_largest_angle_change():
    angles = np.array([[0, 0], [100, 10], [300, 20], [310, -200]], float)
    np.testing.assert_allclose(syngym.rotation_steps(angles, np.arange(4)), [100, 200, 220])
    np.testing.assert_allclose(syngym.rotation_steps(angles, np.array([0, 2, 3]), [(0, 2)]), [310])
    forward, backward = CLASSES[5], CLASSES[12]  # double salto forward / backward tucked
    perf = clip_params(0, 1, forward, SIZES["default"])[1]
    np.testing.assert_allclose(syngym.clip_angles(backward, perf), syngym.clip_angles(forward, perf)[::-1])


def test_counts_differ_only_in_how_far_the_body_turns():
    perf = Performance(num_frames=40, lead_in=4, element_frames=30, warp=0.2, facing=1, height=0.7, travel=0.4,
                       spin_sign=-1)
    for turns in (1, 1.5, 2):
        track = element_track("turn", "free_leg_low", 0, turns, perf)
        assert track.twist[-1] == pytest.approx(-360 * turns) and track.twist[0] == 0
    single, double = (element_track("salto", "piked", n, 0, perf) for n in (1, 2))
    assert (single.salto[-1], double.salto[-1]) == (pytest.approx(360), pytest.approx(720))
    np.testing.assert_allclose(single.poses, double.poses)  # same shapes, only the rotation differs


def test_body_shapes_differ_only_in_flight():
    perf = Performance(num_frames=40, lead_in=5, element_frames=30, warp=0.0, facing=1, height=0.7, travel=0.4,
                       spin_sign=1)
    tucked, piked, stretched = (element_track("salto", s, 1, 0, perf).poses for s in ("tucked", "piked", "stretched"))
    still = np.r_[0:5, 35:40]  # lead-in and lead-out frames
    np.testing.assert_allclose(tucked[still], piked[still])
    np.testing.assert_allclose(piked[still], stretched[still])
    apex = 20
    assert np.abs(tucked[apex] - piked[apex]).max() > 90  # knees
    assert np.abs(piked[apex] - stretched[apex]).max() > 90  # hips


def test_rasterise_draws_capsules_far_to_near():
    canvas = np.zeros((3, 1, 24, 24), np.float32)  # (C, T, H, W)
    p0 = np.array([[[2.0, 12.0], [12.0, 2.0]]], np.float32)  # (T=1, S=2, 2) as (col, row)
    p1 = np.array([[[22.0, 12.0], [12.0, 22.0]]], np.float32)
    colour = np.array([[[255.0, 0, 0], [0, 255.0, 0]]], np.float32)
    rasterise(canvas, p0, p1, np.array([1.5, 1.5], np.float32), colour, np.array([[1.0, 0.0]]))  # red nearer
    image = canvas[:, 0].transpose(1, 2, 0)  # (H, W, 3)
    assert tuple(image[12, 12]) == (255, 0, 0)  # the crossing shows the nearer (red) capsule
    assert tuple(image[4, 12]) == (0, 255, 0) and tuple(image[12, 4]) == (255, 0, 0)
    assert image[0, 0].sum() == 0 and 0 < image[12, 0].sum() < 255  # outside; anti-aliased at the round end
    with pytest.raises(ValueError, match="contiguous"):
        rasterise(canvas.transpose(0, 1, 3, 2), p0, p1, np.array([1.5, 1.5], np.float32), colour, np.zeros((1, 2)))


# ------------------------------------------------------------------------------------------ broadcast

def test_broadcast_annotation_is_finegym_nested_and_consistent(tiny):
    out, summary = tiny
    data = json.loads((out / "broadcast" / "annotation.json").read_text())
    (yid, events), = data.items()
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{10}", yid)
    info = video_info(out / "broadcast" / f"{yid}.mp4")
    assert len(events) == len(syngym.EVENT_CODES)
    for key, event in events.items():
        (start, end), = event["timestamps"]
        assert key == f"E_{int(start):06d}_{int(end):06d}" and end * TINY.fps <= info.num_frames
        for element_key, element in event["segments"].items():
            (a, b), = element["timestamps"]
            assert element["stages"] == 1 and element_key == f"A_{int(a):04d}_{int(b):04d}"
            assert 0 < a < b < end - start
            assert TINY.min_frames <= round((b - a) * TINY.fps) <= TINY.max_frames
    listed = read_element_list(out / "broadcast" / "element_list.txt")
    assert {c for c, _ in listed} == {a.clip_id for a in read_annotations(out / "broadcast" / "annotation.json")}
    assert summary["broadcast"] == {"videos": 1, "elements": len(listed)}


def test_broadcast_trims_into_its_element_clips(tiny, tmp_path):
    """End to end through the FineGym preparation tool: every element clip comes out with its length."""
    from encoder.data.prepare import prepare_finegym

    out, _ = tiny
    result = prepare_finegym(out / "broadcast", out / "broadcast" / "annotation.json", tmp_path, short_side=None)
    assert result.ok
    annotations = {a.clip_id: a for a in read_annotations(out / "broadcast" / "annotation.json")}
    for clip_id, _ in read_element_list(out / "broadcast" / "element_list.txt"):
        a = annotations[clip_id]
        assert video_info(tmp_path / "elements" / f"{clip_id}.mp4").num_frames == round((a.end - a.start) * TINY.fps)


# ------------------------------------------------------------------------------------ difficulty bench

def _bench(name: str = "syngym_difficulty"):
    """A module of the ``bench`` package."""
    import importlib

    return importlib.import_module(f"bench.{name}")


def test_bench_direction_pair_accuracy_compares_only_the_reversed_sibling():
    import torch

    bench = _bench()

    class Fixed(torch.nn.Module):  # scores every clip the same: class 2 > class 9 > everything else
        def forward(self, x):
            logits = torch.zeros(len(x), len(CLASSES))
            logits[:, 2], logits[:, 9] = 2.0, 1.0
            return logits

    clips = torch.zeros(4, 9, 3, 16, 16, dtype=torch.uint8)
    labels = torch.tensor([2, 9, 9, 0])  # forward wins once, backward loses twice, label 0 is in no pair
    result = bench.evaluate(Fixed(), clips, labels, 8, [(2, 9)])
    assert result == {"top1": 25.0, "direction_pairs": 33.3, "direction_clips": 3}
    few = bench.stratified(torch.tensor([0] * 20 + [1] * 10 + [2]), 0.1, seed=0)
    assert torch.bincount(torch.tensor([0] * 20 + [1] * 10 + [2])[few]).tolist() == [2, 1, 1]


def test_bench_runs_end_to_end_on_tiny(tiny, tmp_path):
    out, _ = tiny
    report = tmp_path / "difficulty.json"
    assert _bench().main(["--data", str(out), "--steps", "2", "--batch", "4", "--out", str(report)]) == 0
    record = json.loads(report.read_text())
    results = record["data"]["results"]
    assert list(results) == ["single_frame", "temporal", "temporal_10pct", "pose_oracle"]
    assert [r["frames"] for r in results.values()] == [1, 8, 8, 8]
    assert results["temporal_10pct"]["train_clips"] == len(CLASSES)  # at least one clip per class
    per_class = record["data"]["per_class"]  # the second table: aliasing and the oracle per class
    assert [r["label"] for r in per_class] == [c.label for c in CLASSES] and len(record["tables"]) == 2
    assert all(r["eval"] == 0 and r["clips"] == TINY.train_per_class + TINY.val_per_class for r in per_class)


def test_bench_pose_features_are_facing_normalised():
    bench = _bench()
    element = CLASSES[5]
    perf = clip_params(0, 2, element, SIZES["default"])[1]
    left, right = (bench.pose_features(element, dataclasses.replace(perf, facing=f)) for f in (-1, 1))
    np.testing.assert_allclose(left, right, atol=1e-9)
    backward = bench.pose_features(CLASSES[12], perf)
    assert np.abs(backward - right).max() > 0.1  # the reversed sibling gives other features


def test_tables_pair_metrics_at_element_and_set_level():
    import torch

    tables = _bench("syngym_tables")

    pairs = [(2, 9), (21, 22)]
    elements = [2, 9, 21, 0]  # element labels of 4 clips; 0 is in no pair
    probs = torch.zeros(4, 33)
    probs[:, 2], probs[:, 9] = 0.6, 0.3  # always "2 before 9"
    identity = {i: i for i in range(33)}
    got = tables.pair_metrics(probs, torch.tensor(elements), elements, pairs, identity)
    assert got == {"pair_top1": pytest.approx(1 / 3), "pair_accuracy": pytest.approx(1 / 3)}

    # set level: 2 -> set 1, 9 -> set 2 (kept apart); 21 and 22 share set 4 (no pair accuracy for that clip)
    mapping = identity | {2: 1, 9: 2, 21: 4, 22: 4, 0: 0}
    labels = torch.tensor([mapping[e] for e in elements])
    probs = torch.zeros(4, 6)
    probs[:, 1], probs[:, 4] = 0.7, 0.2
    got = tables.pair_metrics(probs, labels, elements, pairs, mapping)
    assert got == {"pair_top1": pytest.approx(1 / 3), "pair_accuracy": pytest.approx(1 / 2)}


def test_probe_bench_runs_every_variant_end_to_end_on_tiny(tiny, tmp_path):
    """bench/syngym_probe.py: each variant (the real TimeSformer configs and the CNN) trains, evaluates, reports."""
    out, _ = tiny
    probe = _bench("syngym_probe")
    report = tmp_path / "probe.json"
    assert probe.main(["--data", str(out), "--steps", "2", "--batch", "2", "--eval-every", "1", "--threads", "1",
                       "--out", str(report)]) == 0
    results = json.loads(report.read_text())["data"]["results"]
    assert list(results) == list(probe.VARIANTS)
    for r in results.values():
        assert [c["step"] for c in r["curve"]] == [1, 2] and 0 <= r["top1"] <= 100 and r["params"] > 0
    assert results["embedded"]["params"] < results["conv16"]["params"]  # the ImageNet stem stays frozen


def test_probe_bench_trains_on_a_stratified_share_of_the_labels(tiny, tmp_path, capsys):
    out, _ = tiny
    probe = _bench("syngym_probe")
    report = tmp_path / "probe.json"
    assert probe.main(["--data", str(out), "--variants", "cnn", "--steps", "1", "--batch", "2", "--threads", "1",
                       "--label-ratio", "0.5", "--out", str(report)]) == 0
    assert "training on 33 labeled clips (50% of each class)" in capsys.readouterr().out  # 1 of the 2 per class
    written = json.loads(report.read_text())
    assert written["data"]["args"]["label_ratio"] == 0.5 and written["title"].endswith(", 50% of the labels")
    assert "50% of the labels (33 train clips)" in json.dumps(written["tables"])
    for bad in ("0", "1.5"):
        with pytest.raises(SystemExit) as exit_info:
            probe.main(["--data", str(out), "--label-ratio", bad, "--out", str(report)])
        assert exit_info.value.code == 2
    assert "--label-ratio" in capsys.readouterr().err


def test_probe_bench_trains_on_the_clips_of_a_labeled_list(tiny, tmp_path, capsys):
    """--labeled: exactly an encoder run's labeled clips (``path label`` lines, matched by file name); a clip the
    train list lacks or labels otherwise is one error line naming the list's line, and nothing is written."""
    out, _ = tiny
    probe = _bench("syngym_probe")
    train = (out / "train_element.txt").read_text().split()
    chosen = [(train[i], int(train[i + 1])) for i in range(0, 20, 4)]  # 5 clips of the train list
    listed = tmp_path / "labeled.txt"
    listed.write_text("".join(f"{out / 'videos' / clip}.mp4 {label}\n" for clip, label in chosen))
    report = tmp_path / "probe.json"
    assert probe.main(["--data", str(out), "--variants", "cnn", "--steps", "1", "--batch", "2", "--threads", "1",
                       "--labeled", str(listed), "--out", str(report)]) == 0
    assert f"training on the 5 labeled clips of {listed}" in capsys.readouterr().out
    written = json.loads(report.read_text())
    assert written["title"].endswith(f", the labeled clips of {listed}")
    labels = [int(train[i + 1]) for i in range(0, len(train), 2)]
    keep = probe.labeled_indices(listed, out / "train_element.txt").tolist()
    assert keep == [0, 2, 4, 6, 8] and [labels[i] for i in keep] == [label for _, label in chosen]
    for bad, reason in ((f"{out / 'videos' / chosen[0][0]}.mp4 {(chosen[0][1] + 1) % 33}", "has label"),
                        ("videos/not_a_clip.mp4 0", "clip not_a_clip is not in"),
                        (f"{out / 'videos' / chosen[1][0]}.mp4 {chosen[1][1]}", "duplicate of line 1")):
        listed.write_text(f"{out / 'videos' / chosen[1][0]}.mp4 {chosen[1][1]}\n{bad}\n")
        report.unlink(missing_ok=True)
        assert probe.main(["--data", str(out), "--variants", "cnn", "--steps", "1", "--labeled", str(listed),
                           "--out", str(report)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {listed}:2: ") and reason in err and "\n" not in err
        assert not report.exists()
    assert probe.main(["--data", str(out), "--labeled", str(tmp_path / "missing.txt"), "--out", str(report)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'missing.txt'}")
    with pytest.raises(SystemExit) as exit_info:  # one way to choose the labeled clips
        probe.main(["--data", str(out), "--labeled", str(listed), "--label-ratio", "0.5", "--out", str(report)])
    assert exit_info.value.code == 2


def test_benches_refuse_a_folder_of_another_syngym_version(tiny, tmp_path, capsys):
    """Numbers measured on clips of another generator version must not be published as this version's."""
    from common.errors import DataError
    from encoder.data.syngym import dataset_identity

    out, _ = tiny
    identity = dataset_identity(out)
    assert identity["syngym_version"] == VERSION and len(identity["content_sha256"]) == 64
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((out / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "version": VERSION - 1}))
    with pytest.raises(DataError, match=f"SynGym version {VERSION - 1}, but this code writes version {VERSION}"):
        dataset_identity(old)
    assert _bench("syngym_probe").main(["--data", str(old), "--out", str(tmp_path / "r.json")]) == 2
    assert _bench("syngym_difficulty").main(["--data", str(old), "--out", str(tmp_path / "r.json")]) == 2
    with pytest.raises(SystemExit) as exit_info:
        _bench("syngym_tables").main(["--data", str(old), "--runs", str(tmp_path / "runs"), "--out",
                                      str(tmp_path / "r.json")])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 3 and all(line.startswith(f"error: {old / 'manifest.json'}: SynGym version 2,") for line in err)
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "runs").exists()
    with pytest.raises(DataError, match="not a folder"):
        dataset_identity(old / "manifest.json")


def test_tables_refuse_to_reuse_a_run_trained_on_other_clips(tiny, tmp_path):
    from common.errors import DataError
    from encoder.data.syngym import dataset_identity

    out, _ = tiny
    tables = _bench("syngym_tables")
    identity = dataset_identity(out)
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "results.json").write_text("{}")
    (run / "dataset.json").write_text(json.dumps({**identity, "content_sha256": "0" * 64}))
    with pytest.raises(DataError, match="trained on other clips"):
        tables.run_one(Path("unused.yaml"), out, run, [], 0, {}, identity)


def test_tables_refuse_to_reuse_a_run_trained_with_another_config(tiny, tmp_path):
    """A finished run of an older recipe must not be published as the current recipe's."""
    import yaml

    from common.errors import ConfigError
    from encoder.config import load_config
    from encoder.data.syngym import dataset_identity

    out, _ = tiny
    tables = _bench("syngym_tables")
    identity = dataset_identity(out)
    config = Path(__file__).resolve().parents[1] / "configs" / "encoder" / "syngym_tiny.yaml"
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "results.json").write_text("{}")
    (run / "dataset.json").write_text(json.dumps(identity))
    level = {"root": out, "overrides": []}
    saved = load_config(config, [f"data.root={out}", f"out={run}", "seed=0", "data.split_seed=0", "optim.lr=0.002"])
    (run / "config.yaml").write_text(yaml.safe_dump(saved.to_dict()))
    with pytest.raises(ConfigError, match=r"started with another config; differing keys:\n  - optim.lr"):
        tables.run_one(config, out, run, [], 0, level, identity)
    # the same recipe, with the clips' folder spelled another way: reused, not retrained
    import torch
    from safetensors.torch import save_file

    same = load_config(config, [f"data.root={out}/.", f"out={run}", "seed=0", "data.split_seed=0"])
    (run / "config.yaml").write_text(yaml.safe_dump(same.to_dict()))
    result = {"teacher": {"top1": 0.5}, "student": {"top1": 0.25}, "step": 320, "train_seconds": 1.0}
    (run / "final" / "results.json").write_text(json.dumps(result))
    save_file({"probs": torch.tensor([[0.7, 0.3], [0.6, 0.4]]), "labels": torch.tensor([0, 1])},
              run / "final" / "val_predictions_teacher.safetensors")
    level = {**level, "elements": [0, 1], "pairs": [(0, 1)], "mapping": {0: 0, 1: 1}}
    got = tables.run_one(config, out, run, [], 0, level, identity)
    assert got == {"top1": 0.5, "student_top1": 0.25, "step": 320, "train_seconds": 1.0, "pair_top1": 0.5,
                   "pair_accuracy": 0.5}


@pytest.mark.parametrize("ratio, rows, title, tables", [
    ("0.2", ["supervised-only", "SeFAR"], "semi-supervised tables (element level, 20% labels)", ["main"]),
    ("1.0", ["supervised-only"], "supervised ceiling (element level, all labels)", ["main"]),
    (None, ["SeFAR", "SeFAR w/o Ada-Reg"], "semi-supervised tables (element level, 10% labels)",
     ["main", "ablation (Tab. 3)"]),
])
def test_tables_title_and_which_comparisons_are_shown(tiny, tmp_path, monkeypatch, ratio, rows, title, tables):
    from common.results import read_result

    out, _ = tiny
    bench = _bench("syngym_tables")
    monkeypatch.setattr(bench, "prepare_level", lambda data, level, runs: {"classes": 33, "root": out, "overrides": []})
    fake = {"top1": 0.3, "student_top1": 0.3, "step": 4, "train_seconds": 1.0, "pair_top1": 0.2, "pair_accuracy": 0.5}
    monkeypatch.setattr(bench, "run_one", lambda *args: fake)
    result = tmp_path / "r.json"
    bench.main([*([f"data.label_ratio={ratio}"] if ratio else []), "--data", str(out), "--runs", str(tmp_path / "runs"),
                "--out", str(result), "--seeds", "0", "1", "--rows", *rows])
    written = read_result(result)
    assert written["title"] == f"SynGym {title}"
    bench.main(["--data", str(out), "--runs", str(tmp_path / "runs"), "--out", str(result), "--seeds", "0",
                "--rows", *rows, "--title", "Where the tube is mixed"])
    assert read_result(result)["title"] == "Where the tube is mixed"
    # a comparison beyond the main table is shown only where two of its rows ran
    assert [t["title"] for t in written["tables"]] == tables


def test_tables_fork_the_semi_supervised_rows_from_the_supervised_run(tiny, tmp_path):
    """The supervised-only row runs first and keeps its checkpoint where the supervised epochs end; SeFAR forks from
    it (the same run up to there), w/o Dual-Ele (another model) trains in full."""
    from common.results import read_result

    out, _ = tiny
    bench = _bench("syngym_tables")
    runs = tmp_path / "runs"
    budget = ["optim.epochs=2", "optim.steps_per_epoch=2", "optim.warmup_steps=1", "ssl.supervised_epochs=1",
              "optim.batch_size=4", "optim.micro_batch_size=4", "ssl.passes=2", "data.num_workers=0", "log_every=1"]
    bench.main([*budget, "--data", str(out), "--runs", str(runs), "--out", str(tmp_path / "r.json"), "--seeds", "0",
                "--rows", "SeFAR", "SeFAR w/o Dual-Ele", "supervised-only"])
    assert (runs / "supervised_only_seed0" / "checkpoints" / "step_0000002").is_dir()
    forked = json.loads((runs / "sefar_seed0" / "forked_from.json").read_text())
    assert forked["step"] == 2 and forked["checkpoint"].endswith("supervised_only_seed0/checkpoints/step_0000002")
    assert not (runs / "sefar_w_o_dual_ele_seed0" / "forked_from.json").exists()
    results = read_result(tmp_path / "r.json")["data"]["results"]
    assert list(results) == ["SeFAR", "SeFAR w/o Dual-Ele", "supervised-only"]  # as asked, though trained in order
    assert all(r[0]["step"] == 4 for r in results.values())
