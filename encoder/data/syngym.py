"""SynGym: a synthetic, fine-grained gymnastics dataset in the FineGym file formats.

``synthesize(out, seed, size)`` renders short H.264 clips of an articulated figure performing *elements* on
a floor (FX), a beam (BB) or the uneven bars (UB). As in FineGym, classes differ only in details and in time:

* direction pairs: every backward element is the exact time reverse of its forward sibling, and the performer
  faces left or right at random, so no single frame tells forward from backward;
* counts: single vs double saltos, 1 / 1.5 / 2 turns, with and without twists or turns;
* shape: tucked / piked / stretched bodies, visible only in flight.

Nuisances shared by every class: figure size, place and colours, arena texture, camera shake, speed and
time warp, lead-in / lead-out frames and pixel noise. The layout written under ``out``::

    videos/<clip id>.mp4        one element clip per id (H.264, yuv420p)
    categories.txt              Gym99-style "Clabel:   0; set: 22; Glabel:   0; (FX) ..." lines
    set_categories.txt          "set: 22; FX_turns" lines
    train_element.txt           "<clip id> <label>" (likewise val_element.txt)
    annotation.json             FineGym nesting {youtube_id: {"E_...": {"event", "timestamps", "segments"}}}
    manifest.json               seed, size, counts, frame size, fps, version and a digest of every file
    broadcast/                  optional long videos with their own annotation.json and element_list.txt

Clip ids are FineGym ids ``{youtube_id}_E_{XXXXXX}_{YYYYYY}_A_{ZZZZ}_{WWWW}`` of made-up 11-character YouTube
ids, consistent with ``annotation.json``. Every file is a pure function of ``(seed, size)``: two runs give
byte-identical files whatever the number of workers. See ``docs/syngym.md`` for the design and its measured
difficulty.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from common.errors import ConfigError, DataError
from common.jsonio import dumps, read_json_object
from encoder.data.sampling import ElementLayout, segment_frame_indices
from encoder.data.syngym_motion import Performance, element_track, figure_motion, rest_motion
from encoder.data.syngym_render import Scene, render_frames

__all__ = [
    "CLASSES",
    "EVENT_CODES",
    "SET_NAMES",
    "SIZES",
    "VERSION",
    "ALIAS_DEG",
    "ElementClass",
    "SizePreset",
    "broadcast_video",
    "aliasing",
    "build_plan",
    "category_line",
    "clip_angles",
    "clip_params",
    "dataset_identity",
    "direction_pairs",
    "format_summary",
    "render_clip",
    "rotation_steps",
    "sample_performance",
    "sample_scene",
    "synthesize",
    "write_video",
]

VERSION = 3  # 2: own YUV conversion and x264 without mb-tree, so that files are byte-identical everywhere;
# 3: the front of the body visible at 64 px, and no rotation of 180 degrees or more between sampled frames
EVENT_CODES = {"FX": 2, "BB": 3, "UB": 4}
SET_NAMES = {22: "FX_turns", 24: "FX_front_salto", 25: "FX_back_salto", 32: "BB_turns", 33: "BB_flight_salto",
             41: "UB_circles"}
# x264 settings that make the bitstream a function of the frames alone (measured, see docs/syngym.md):
# one thread; no macroblock-tree rate control, whose float code reads memory that the encoder leaves
# uninitialised on AVX-512 machines (the same frames encoded twice in one process gave different files) and
# whose SIMD versions round differently from one CPU to another. Frames arrive as yuv420p
# (:func:`rgb_to_yuv420p`), so FFmpeg's colour conversion, whose SIMD paths also depend on the CPU, never runs.
X264_OPTIONS = {"preset": "veryfast", "crf": "20", "threads": "1", "flags": "+bitexact", "x264-params": "mbtree=0"}


# ------------------------------------------------------------------------------------------------ classes

@dataclass(frozen=True)
class ElementClass:
    """One element class: its FineGym-style label and name, and the motion that renders it.

    ``motion`` is ``"salto"``, ``"turn"`` or ``"circle"``; ``shape`` a key of the motion's shape table;
    ``direction`` +1 forward, -1 backward, 0 for turns; ``rotations`` saltos per element; ``turns`` twists
    (saltos) or turns about the long axis (turns, circles).
    """

    label: int
    event: str
    set_id: int
    name: str
    motion: str
    shape: str
    direction: int
    rotations: float
    turns: float

    @property
    def category_line(self) -> str:
        """The class as a Gym99 categories line (``Glabel`` equals the label)."""
        return category_line(self.label, self.set_id, self.label, self.event, self.name)


def category_line(label: int, set_id: int, glabel: int, event: str, name: str) -> str:
    """A categories line spaced exactly as FineGym's ``gym99_categories.txt``:
    ``"Clabel:   0; set: 22; Glabel:   0; (FX) name"``."""
    return f"Clabel: {label:3d}; set: {set_id:2d}; Glabel: {glabel:3d}; ({event}) {name}"


def _class_specs() -> list[tuple]:
    """``(event, set, name, motion, shape, direction, rotations, turns)`` for every class, in label order.

    Names follow FineGym's wording, so that classes of one set are hard siblings (Gym-QA's distractors).
    """
    fx_turn = "turn with heel of free leg forward at horizontal throughout turn"
    specs: list[tuple] = [("FX", 22, f"{n} {fx_turn}", "turn", "heel_forward", 0, 0, n) for n in (1, 2)]
    for set_id, word, direction in ((24, "forward", 1), (25, "backward", -1)):
        for rotations, prefix in ((1, ""), (2, "double ")):
            for shape in ("tucked", "piked", "stretched"):
                specs.append(("FX", set_id, f"{prefix}salto {word} {shape}", "salto", shape, direction, rotations, 0))
        specs.append(("FX", set_id, f"salto {word} stretched with 1 twist", "salto", "stretched", direction, 1, 1))
    bb_turn = "turn on one leg, free leg optional below horizontal"
    specs += [("BB", 32, f"{n:g} {bb_turn}", "turn", "free_leg_low", 0, 0, n) for n in (1, 1.5, 2)]
    bb_tuck = "turn in tuck stand on one leg, free leg optional"
    specs += [("BB", 32, f"{n} {bb_tuck}", "turn", "tuck_stand", 0, 0, n) for n in (1, 2)]
    for word, direction in (("forward", 1), ("backward", -1)):
        for shape in ("tucked", "stretched"):
            specs.append(("BB", 33, f"salto {word} {shape}", "salto", shape, direction, 1, 0))
    circles = (("giant", "giant circle"), ("clear_hip", "clear hip circle"), ("pike_sole", "pike sole circle"))
    for word, direction in (("forward", 1), ("backward", -1)):
        for shape, name in circles:
            specs.append(("UB", 41, f"{name} {word} to handstand", "circle", shape, direction, 1, 0))
        specs.append(("UB", 41, f"giant circle {word} with 1 turn to handstand", "circle", "giant", direction, 1, 1))
    return specs


CLASSES: tuple[ElementClass, ...] = tuple(ElementClass(label, *spec) for label, spec in enumerate(_class_specs()))


def direction_pairs() -> list[tuple[int, int]]:
    """``(forward label, backward label)`` of every pair of classes that differ only in direction."""
    def key(c: ElementClass) -> tuple:
        return (c.event, c.motion, c.shape, c.rotations, c.turns)

    backward = {key(c): c.label for c in CLASSES if c.direction < 0}
    return [(c.label, backward[key(c)]) for c in CLASSES if c.direction > 0]


# ------------------------------------------------------------------------------------------------- sizes

@dataclass(frozen=True)
class SizePreset:
    """How much to generate: clips per class and split, square frame size (px), clip length range, fps."""

    name: str
    train_per_class: int
    val_per_class: int
    frame_size: int
    min_frames: int
    max_frames: int
    fps: int = 25


SIZES = {
    "tiny": SizePreset("tiny", train_per_class=2, val_per_class=1, frame_size=64, min_frames=16, max_frames=24),
    "default": SizePreset("default", train_per_class=60, val_per_class=15, frame_size=64, min_frames=32, max_frames=48),
}


# ---------------------------------------------------------------------------------------------- sampling

# Per event: pixels per body unit and the ground (floor, beam top, bar) row, as fractions of the frame size.
_SCALE = {"FX": (0.31, 0.39), "BB": (0.28, 0.35), "UB": (0.24, 0.285)}
_GROUND = {"FX": (0.82, 0.90), "BB": (0.70, 0.76), "UB": (0.45, 0.51)}
_SKIN = np.array([[255, 219, 172], [241, 194, 125], [224, 172, 105], [198, 134, 66], [141, 85, 36], [92, 56, 30]])


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    """HSV in ``[0, 1]`` to an RGB tuple in 0..255."""
    k = (np.array([5.0, 3.0, 1.0]) + 6.0 * h) % 6.0
    rgb = v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return tuple(float(x) for x in 255.0 * rgb)


def _luma(rgb) -> float:
    """BT.601 luma of an RGB colour in 0..255."""
    return float(np.dot([0.299, 0.587, 0.114], rgb))


def front_colours(leotard: tuple[float, float, float], hue: float, skin: np.ndarray, u: float
                  ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The accent (front of the torso) and hair colours that stand out from the back of the body (v3).

    The accent takes the leotard's opposite hue and, of a bright and a dark version, the one whose luma is
    farther from the leotard's as drawn (shaded by 0.82), so that the front still shows after 4:2:0 chroma
    subsampling. The hair cap is dark on light skin and light on dark skin.
    """
    drawn = 0.82 * _luma(leotard)
    accent = max((_hsv((hue + 0.5) % 1.0, 0.9, v) for v in (1.0, 0.45)), key=lambda c: abs(_luma(c) - drawn))
    if _luma(skin) >= 120:
        hair = _hsv(0.05 + 0.05 * u, 0.5, 0.1 + 0.12 * u)  # black to dark brown
    else:
        hair = _hsv(0.1 + 0.03 * u, 0.25 + 0.2 * u, 0.85 + 0.1 * u)  # blond to grey
    return accent, hair


def sample_scene(rng: np.random.Generator, event: str, frame_size: int) -> Scene:
    """Draw the nuisances of one clip (or one broadcast event). Always consumes the same random numbers."""
    u = rng.random(11)
    seeds = rng.integers(0, 2**32, 3)
    lo, hi = _SCALE[event]
    g_lo, g_hi = _GROUND[event]
    skin = np.clip(_SKIN[int(u[5] * len(_SKIN))] + 20.0 * (u[6] - 0.5), 0, 255)
    leotard = _hsv(u[3], 0.5 + 0.45 * u[4], 0.6 + 0.4 * u[7])
    accent, hair = front_colours(leotard, u[3], skin, u[10])
    return Scene(
        event=event,
        frame_size=frame_size,
        scale=frame_size * (lo + (hi - lo) * u[0]),
        ground_row=frame_size * (g_lo + (g_hi - g_lo) * u[1]),
        centre_col=frame_size * (0.44 + 0.12 * u[2]),
        leotard=leotard,
        accent=accent,
        skin=tuple(float(x) for x in skin),
        hair=hair,
        background_seed=int(seeds[0]),
        low_bar_side=1 if u[8] < 0.5 else -1,
        camera_amplitude=1.5 * u[9] * frame_size / 64,
        camera_seed=int(seeds[1]),
        noise_sigma=float(rng.uniform(2.0, 6.0)),
        noise_seed=int(seeds[2]),
    )


# Element speed (v3): the element fills 90-100% of the clip and its speed varies within it by at most +-15%, so
# that no rotation turns 180 degrees or more between two sampled frames (v2: 62-85% and +-35%; docs/syngym.md).
ELEMENT_FILL = (0.90, 1.0)
WARP = 0.15


def sample_performance(rng: np.random.Generator, preset: SizePreset, element: ElementClass) -> Performance:
    """Draw the timing nuisances of one clip. Consumes the same random numbers for every class."""
    num_frames = int(rng.integers(preset.min_frames, preset.max_frames + 1))
    element_frames = int(round(num_frames * rng.uniform(*ELEMENT_FILL)))
    lead_in = int(rng.integers(0, num_frames - element_frames + 1))
    u = rng.random(5)
    return Performance(
        num_frames=num_frames,
        lead_in=lead_in,
        element_frames=element_frames,
        warp=2 * WARP * (u[0] - 0.5),
        facing=1 if u[1] < 0.5 else -1,
        height=0.55 + 0.25 * u[2] + 0.2 * (element.rotations > 1),
        travel=0.3 + 0.3 * u[3],
        spin_sign=1 if u[4] < 0.5 else -1,
    )


def clip_params(seed: int, index: int, element: ElementClass, preset: SizePreset) -> tuple[Scene, Performance]:
    """The scene and performance of clip ``index`` of a dataset made with ``seed`` (its own random stream)."""
    rng = np.random.default_rng([seed, 0, index])
    scene = sample_scene(rng, element.event, preset.frame_size)
    return scene, sample_performance(rng, preset, element)


def render_clip(element: ElementClass, scene: Scene, perf: Performance) -> np.ndarray:
    """Render one clip: ``(perf.num_frames, S, S, 3)`` uint8 RGB."""
    placed = figure_motion(element.motion, element.shape, element.direction, element.rotations, element.turns, perf)
    return render_frames(scene, placed)


# ----------------------------------------------------------------------------------------------- aliasing

#: A rotation of this many degrees or more between two sampled frames is ambiguous: the shorter way round
#: is the other sense, so the frames show the element turning backwards.
ALIAS_DEG = 180.0
NUM_SAMPLED = 8  # frames SeFAR samples per clip (one per equal segment)
DUAL_COMBO = "2-2-4"  # the default dual-level layout


def clip_angles(element: ElementClass, perf: Performance) -> np.ndarray:
    """Salto and twist/turn angles (degrees) of every frame of a performed clip, in the clip's time order,
    ``(T, 2)``. A backward clip is the forward clip reversed, so its angles are the forward ones reversed."""
    track = element_track(element.motion, element.shape, element.rotations, element.turns, perf)
    angles = np.stack([track.salto, track.twist], axis=1)
    return angles[::-1] if element.direction < 0 else angles


def rotation_steps(angles: np.ndarray, indices: np.ndarray, pairs: Iterable[tuple[int, int]] | None = None
                   ) -> np.ndarray:
    """The largest absolute change of the salto or twist angle between pairs of sampled frames, ``(P,)``.

    ``angles`` ``(T, 2)`` from :func:`clip_angles`; ``indices`` the sampled frame indices ``(K,)``; ``pairs``
    positions into ``indices`` (default: consecutive frames, ``(0, 1), (1, 2), ...``).
    """
    pairs = list(pairs) if pairs is not None else [(i, i + 1) for i in range(len(indices) - 1)]
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    sampled = angles[np.asarray(indices)]
    return np.abs(sampled[b] - sampled[a]).max(axis=1)


def _element_pairs(combo: str = DUAL_COMBO) -> dict[str, list[tuple[int, int]]]:
    """Frames adjacent inside the dual-level elements of ``combo``: ``{"fine": [...], "context": [...]}``."""
    layout = ElementLayout.from_combo(combo)
    def adjacent(elements):
        return [(e[i], e[i + 1]) for e in elements for i in range(len(e) - 1)]

    return {"fine": adjacent(layout.fine), "context": adjacent([layout.context])}


def aliasing(element: ElementClass, perfs: Iterable[Performance], train_draws: int = 10,
             seed: int = 0) -> dict[str, float]:
    """Fractions of clips of ``element`` (performed as ``perfs``) in which some step between sampled frames
    turns by :data:`ALIAS_DEG` or more.

    ``eval``: the 8 segment-centre frames, consecutive pairs (the evaluation sampling); ``train``: one random
    frame per segment (the training sampling), ``train_draws`` draws per clip; ``fine`` and ``context``: frames
    adjacent inside the fine elements and inside the context element of ``{2-2-4}`` (segment centres).
    Also ``eval_median_max``: over clips, the median of the largest consecutive step (degrees).
    """
    rng = np.random.default_rng(seed)
    within = _element_pairs()
    hits = {"eval": [], "train": [], "fine": [], "context": []}
    steps = []
    for perf in perfs:
        angles = clip_angles(element, perf)
        centres = segment_frame_indices(perf.num_frames, NUM_SAMPLED, train=False)
        eval_steps = rotation_steps(angles, centres)
        steps.append(eval_steps.max())
        hits["eval"].append(eval_steps.max() >= ALIAS_DEG)
        for name, pairs in within.items():
            hits[name].append(rotation_steps(angles, centres, pairs).max() >= ALIAS_DEG)
        for _ in range(train_draws):
            drawn = segment_frame_indices(perf.num_frames, NUM_SAMPLED, train=True, rng=rng)
            hits["train"].append(rotation_steps(angles, drawn).max() >= ALIAS_DEG)
    out = {name: float(np.mean(values)) for name, values in hits.items()}
    out["eval_median_max"] = float(np.median(steps))
    return out


# ------------------------------------------------------------------------------------------------ writing

def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """BT.601 limited-range YUV 4:2:0 of ``(T, H, W, 3)`` uint8 RGB (even H, W) in integer arithmetic.

    Returns ``(T, 3H/2, W)`` uint8 laid out as PyAV's ``yuv420p`` arrays: the Y plane, then U and V
    (``H/2 x W/2`` each) in raster order. Chroma is taken from the mean of each 2x2 block. Integer maths gives
    the same bytes on every CPU, which FFmpeg's own conversion does not promise.
    """
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {h}x{w}")
    rgb = frames.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    quad = rgb.reshape(t, h // 2, 2, w // 2, 2, 3).sum(axis=(2, 4))  # (T, H/2, W/2, 3), each in [0, 1020]
    qr, qg, qb = quad[..., 0], quad[..., 1], quad[..., 2]
    u = ((-38 * qr - 74 * qg + 112 * qb + 512) >> 10) + 128
    v = ((112 * qr - 94 * qg - 18 * qb + 512) >> 10) + 128
    planes = [y.reshape(t, -1), u.reshape(t, -1), v.reshape(t, -1)]
    return np.concatenate(planes, axis=1).astype(np.uint8).reshape(t, h * 3 // 2, w)


def write_video(path: str | os.PathLike, chunks: Iterable[np.ndarray], fps: int) -> str:
    """Encode ``(T, H, W, 3)`` uint8 RGB chunks as one H.264 mp4 (yuv420p) at ``path``; returns its sha256.

    The file is written under a temporary name in the same folder and renamed when complete. The colour
    conversion is ours (integer), encoder and muxer run single-threaded in bit-exact mode without mb-tree
    (:data:`X264_OPTIONS`), so equal frames give byte-identical files.
    """
    import av

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with av.open(str(tmp), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
            stream = None
            for chunk in chunks:
                if stream is None:
                    stream = container.add_stream("libx264", rate=fps, options=X264_OPTIONS)
                    stream.height, stream.width = chunk.shape[1:3]
                    stream.pix_fmt = "yuv420p"
                for frame in rgb_to_yuv420p(chunk):
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="yuv420p")))
            if stream is None:
                raise ValueError(f"{path}: no frames to write")
            container.mux(stream.encode())
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return digest


def _write_text(path: Path, text: str) -> str:
    """Write ``text`` (UTF-8, ``\\n`` line ends) atomically; returns its sha256."""
    data = text.encode("utf-8")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return hashlib.sha256(data).hexdigest()


def _write_json(path: Path, data: object, indent: int | None = None) -> str:
    return _write_text(path, dumps(data, indent=indent) + "\n")


# --------------------------------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class ClipJob:
    """One element clip to render: its random stream ``index``, split, label, FineGym id and length."""

    index: int
    split: str
    label: int
    clip_id: str
    num_frames: int


_ID_CHARS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


def _youtube_id(rng: np.random.Generator, used: set[str]) -> str:
    """A fresh 11-character YouTube-like id; its first character is alphanumeric (never read as an option)."""
    while True:
        chars = _ID_CHARS[rng.integers(0, len(_ID_CHARS), 11)]
        chars[0] = _ID_CHARS[rng.integers(0, 62)]
        yid = "".join(chars)
        if yid not in used:
            used.add(yid)
            return yid


def _split_events(rng: np.random.Generator, per_class: int) -> list[tuple[str, list[int]]]:
    """Labels of one split dealt into competition events of 4..8 elements, ``[(event, labels), ...]``, shuffled."""
    events = []
    for event in EVENT_CODES:
        labels = [c.label for c in CLASSES if c.event == event] * per_class
        rng.shuffle(labels)
        while labels:
            take = int(rng.integers(4, 9))
            events.append((event, labels[:take]))
            labels = labels[take:]
    return [events[i] for i in rng.permutation(len(events))]


def _event_segments(rng: np.random.Generator, seed: int, preset: SizePreset, labels: list[int],
                    first_index: int) -> tuple[list[tuple[int, int, str]], dict, float]:
    """Lay out one event's elements 1.5..6 s apart: ``[(label, frames, "A_ZZZZ_WWWW")]``, the annotation's
    ``segments`` and the event's length in seconds."""
    items, segments, rel = [], {}, float(rng.uniform(2, 6))
    for offset, label in enumerate(labels):
        num_frames = clip_params(seed, first_index + offset, CLASSES[label], preset)[1].num_frames
        a, b = round(rel, 2), round(rel + num_frames / preset.fps, 2)
        key = f"A_{int(a):04d}_{int(b):04d}"
        segments[key] = {"stages": 1, "timestamps": [[a, b]]}
        items.append((label, num_frames, key))
        rel = b + float(rng.uniform(1.5, 6))
    return items, segments, rel + float(rng.uniform(1, 5))


def build_plan(seed: int, preset: SizePreset) -> tuple[list[ClipJob], dict]:
    """Assign every clip a split, label, made-up video/event/element timeline and FineGym id.

    Returns the jobs (train first, then val; ``index`` = position) and the FineGym-nested annotation of all of
    them. Timestamps are seconds rounded to 0.01; ids use their whole seconds, as FineGym does.
    """
    rng = np.random.default_rng([seed, 1])
    jobs: list[ClipJob] = []
    annotation: dict[str, dict] = {}
    used: set[str] = set()
    for split, per_class in (("train", preset.train_per_class), ("val", preset.val_per_class)):
        events = _split_events(rng, per_class)
        while events:
            take = int(rng.integers(2, 5))
            video, events = events[:take], events[take:]
            yid = _youtube_id(rng, used)
            annotation[yid] = {}
            cursor = float(rng.uniform(20, 600))
            for event, labels in video:
                items, segments, length = _event_segments(rng, seed, preset, labels, len(jobs))
                start, end = round(cursor, 2), round(cursor + length, 2)
                event_key = f"E_{int(start):06d}_{int(end):06d}"
                annotation[yid][event_key] = {"event": EVENT_CODES[event], "timestamps": [[start, end]],
                                              "segments": segments}
                jobs += [ClipJob(len(jobs) + i, split, label, f"{yid}_{event_key}_{key}", frames)
                         for i, (label, frames, key) in enumerate(items)]
                cursor = end + float(rng.uniform(20, 200))
    return jobs, annotation


def _render_job(args: tuple[int, ClipJob, SizePreset, str]) -> tuple[str, str]:
    """Worker: render and write one clip; returns ``(clip id, sha256 of the mp4)``."""
    seed, job, preset, folder = args
    element = CLASSES[job.label]
    scene, perf = clip_params(seed, job.index, element, preset)
    frames = render_clip(element, scene, perf)
    return job.clip_id, write_video(Path(folder) / f"{job.clip_id}.mp4", [frames], preset.fps)


# ---------------------------------------------------------------------------------------------- broadcast

def _card(rng: np.random.Generator, num_frames: int, size: int) -> np.ndarray:
    """A plain graphics card between events: one random dark colour plus noise, ``(T, S, S, 3)`` uint8."""
    colour = rng.uniform(10, 90, 3).astype(np.float32)
    noise = rng.integers(-3, 4, (num_frames, size, size, 3)).astype(np.float32)
    return np.clip(colour + noise, 0, 255).astype(np.uint8)


def _start_end_facing(element: ElementClass, perf: Performance) -> tuple[int, int]:
    """Facing (+1 right / -1 left) at the first and last frame of a performed element (half turns flip it)."""
    flips = -1 if (2 * element.turns) % 2 == 1 else 1
    return perf.facing, perf.facing * flips


def _broadcast_event(rng: np.random.Generator, event: str, preset: SizePreset) -> tuple[np.ndarray, list[tuple]]:
    """One event of a broadcast: 2..3 elements with rests around them, all in one scene.

    Returns the frames ``(T, S, S, 3)`` uint8 and ``[(label, first frame, num frames)]`` of its elements.
    """
    fps = preset.fps
    scene = sample_scene(rng, event, preset.frame_size)
    labels = rng.choice([c.label for c in CLASSES if c.event == event], size=int(rng.integers(2, 4)))
    parts, elements, frame, x, facing = [], [], 0, float(rng.uniform(-0.4, 0.4)), None
    for label in labels:
        element = CLASSES[int(label)]
        perf = sample_performance(rng, preset, element)
        motion = figure_motion(element.motion, element.shape, element.direction, element.rotations, element.turns, perf)
        if element.motion != "circle":
            motion[..., 0] += rng.uniform(-0.4, 0.4)
        start_facing, end_facing = _start_end_facing(element, perf)
        gap = int(rng.integers(fps, 2 * fps))
        parts.append(rest_motion(gap, element.motion, x, motion[0, 0, 0], facing or start_facing))
        elements.append((int(label), frame + gap, perf.num_frames))
        parts.append(motion)
        frame += gap + perf.num_frames
        x, facing = motion[-1, 0, 0], end_facing
    parts.append(rest_motion(int(rng.integers(fps, 2 * fps)), CLASSES[int(labels[-1])].motion, x, x, facing))
    return render_frames(scene, np.concatenate(parts)), elements


def broadcast_video(seed: int, number: int,
                    preset: SizePreset) -> tuple[str, list[np.ndarray], dict, list[tuple[str, int]]]:
    """Long video ``number``: a card, then one event per apparatus in random order, separated by cards.

    Returns the YouTube-like id, the frame chunks, the annotation ``{"E_XXXXXX_YYYYYY": {...}}`` in FineGym
    nesting (seconds, exact multiples of the frame period) and ``[(clip id, label)]`` of its elements.
    """
    rng = np.random.default_rng([seed, 2, number])
    fps, size = preset.fps, preset.frame_size
    yid = _youtube_id(rng, set())
    chunks, annotation, elements, frame = [], {}, [], 0
    for event in rng.permutation(list(EVENT_CODES)):
        card = _card(rng, int(rng.integers(fps // 2, fps + 1)), size)
        frames, items = _broadcast_event(rng, str(event), preset)
        chunks += [card, frames]
        start, end = frame + len(card), frame + len(card) + len(frames)
        event_key = f"E_{start // fps:06d}_{end // fps:06d}"
        segments = {}
        for label, first, count in items:
            a, b = round(first / fps, 2), round((first + count) / fps, 2)
            key = f"A_{int(a):04d}_{int(b):04d}"
            segments[key] = {"stages": 1, "timestamps": [[a, b]]}
            elements.append((f"{yid}_{event_key}_{key}", label))
        span = [[round(start / fps, 2), round(end / fps, 2)]]
        annotation[event_key] = {"event": EVENT_CODES[str(event)], "timestamps": span, "segments": segments}
        frame = end
    chunks.append(_card(rng, fps, size))
    return yid, chunks, annotation, elements


def _broadcast_job(args: tuple[int, int, SizePreset, str]) -> tuple[str, str, dict, list[tuple[str, int]]]:
    """Worker: render and write one broadcast video; returns ``(id, sha256, annotation, elements)``."""
    seed, number, preset, folder = args
    yid, chunks, annotation, elements = broadcast_video(seed, number, preset)
    return yid, write_video(Path(folder) / f"{yid}.mp4", chunks, preset.fps), annotation, elements


# ------------------------------------------------------------------------------------------------- driver

def _run_task(task: tuple[str, tuple]) -> tuple[str, tuple]:
    kind, args = task
    return kind, (_broadcast_job(args) if kind == "broadcast" else _render_job(args))


def _results(tasks: list[tuple[str, tuple]], workers: int) -> Iterator[tuple[str, tuple]]:
    """Run tasks in ``workers`` processes (in this process when 1), yielding results as they finish."""
    from tqdm.auto import tqdm

    with tqdm(total=len(tasks), desc="SynGym", unit="video", disable=None) as bar:
        if workers <= 1:
            for task in tasks:
                yield _run_task(task)
                bar.update()
            return
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for result in pool.imap_unordered(_run_task, tasks, chunksize=8):
                yield result
                bar.update()


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _class_counts(jobs: list[ClipJob], split: str) -> list[int]:
    counts = [0] * len(CLASSES)
    for job in jobs:
        if job.split == split:
            counts[job.label] += 1
    return counts


def _manifest(seed: int, preset: SizePreset, jobs: list[ClipJob], broadcast: list[tuple],
              digests: dict[str, str]) -> dict:
    """The deterministic summary written to ``manifest.json``; ``content_sha256`` digests every other file."""
    splits = {}
    for split in ("train", "val"):
        frames = [job.num_frames for job in jobs if job.split == split]
        splits[split] = {"clips": len(frames), "frames": sum(frames), "per_class": _class_counts(jobs, split)}
    content = "".join(f"{name} {digest}\n" for name, digest in sorted(digests.items()))
    return {
        "dataset": "SynGym",
        "version": VERSION,
        "seed": seed,
        "size": preset.name,
        "preset": asdict(preset),
        "frame_size": [preset.frame_size, preset.frame_size],
        "fps": preset.fps,
        "frames_per_clip": [preset.min_frames, preset.max_frames],
        "num_classes": len(CLASSES),
        "events": {event: sum(c.event == event for c in CLASSES) for event in EVENT_CODES},
        "direction_pairs": [list(pair) for pair in direction_pairs()],
        "splits": splits,
        "broadcast": {"videos": len(broadcast), "elements": sum(len(b[3]) for b in broadcast)},
        "files": len(digests),
        "content_sha256": hashlib.sha256(content.encode()).hexdigest(),
    }


def synthesize(out: str | os.PathLike, seed: int = 0, size: str = "default", workers: int | None = None,
               broadcast: int = 0) -> dict:
    """Write the SynGym dataset of ``size`` (``"tiny"`` or ``"default"``) for ``seed`` into ``out``.

    ``workers`` processes render clips (default: the CPUs available to this process); they are spawned, so a
    script that calls this with more than one worker must do so under ``if __name__ == "__main__":`` (each worker
    imports the script again; the ``sefar`` command does). ``broadcast`` long videos go to ``out/broadcast/``. ``out`` must be new, empty or an earlier SynGym output (whose clips not
    part of this run are then removed). Returns the summary written to ``out/manifest.json`` plus ``"out"``,
    ``"workers"`` and ``"wall_time_s"`` (kept out of the file, so that two runs are byte-identical).
    """
    if size not in SIZES:
        raise ConfigError(f"unknown SynGym size {size!r}; choose one of {sorted(SIZES)}")
    if broadcast < 0:
        raise ConfigError(f"broadcast must be >= 0, got {broadcast}")
    began = time.perf_counter()
    preset, out = SIZES[size], Path(out)
    _check_target(out)
    workers = max(1, workers or _default_workers())
    (out / "videos").mkdir(parents=True, exist_ok=True)
    if broadcast:
        (out / "broadcast").mkdir(exist_ok=True)
    jobs, annotation = build_plan(seed, preset)
    tasks = [("broadcast", (seed, b, preset, str(out / "broadcast"))) for b in range(broadcast)]
    tasks += [("clip", (seed, job, preset, str(out / "videos"))) for job in jobs]
    digests, videos = {}, []
    for kind, result in _results(tasks, workers):
        if kind == "clip":
            digests[f"videos/{result[0]}.mp4"] = result[1]
        else:
            digests[f"broadcast/{result[0]}.mp4"] = result[1]
            videos.append(result)
    digests.update(_write_lists(out, jobs, annotation))
    if broadcast:
        digests.update(_write_broadcast_lists(out, sorted(videos)))
    _remove_stale(out, set(digests))
    manifest = _manifest(seed, preset, jobs, videos, digests)
    _write_json(out / "manifest.json", manifest, indent=2)
    return {**manifest, "out": str(out), "workers": workers, "wall_time_s": round(time.perf_counter() - began, 2)}


_OWN_NAMES = {"videos", "broadcast", "categories.txt", "set_categories.txt", "train_element.txt", "val_element.txt",
              "annotation.json", "manifest.json"}


def _check_target(out: Path) -> None:
    """``out`` must be missing, empty, or hold only SynGym's own files (an earlier run, finished or not)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in _OWN_NAMES) if out.is_dir() else []
    if foreign:
        raise ConfigError(f"{out}: not empty and not a SynGym folder (it holds {', '.join(foreign[:3])}); "
                          "choose a new or empty folder")


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Delete files in ``videos/`` and ``broadcast/`` that this run did not write (an earlier run's, temporaries)."""
    for folder in ("videos", "broadcast"):
        if not (out / folder).is_dir():
            continue
        for path in (out / folder).iterdir():
            if path.is_file() and f"{folder}/{path.name}" not in keep:
                path.unlink()
        if not any((out / folder).iterdir()):
            (out / folder).rmdir()


def _write_lists(out: Path, jobs: list[ClipJob], annotation: dict) -> dict[str, str]:
    """Write the categories, set, element-list and annotation files; returns ``{relative name: sha256}``."""
    files = {
        "categories.txt": "".join(c.category_line + "\n" for c in CLASSES),
        "set_categories.txt": "".join(f"set: {k}; {v}\n" for k, v in SET_NAMES.items()),
        "train_element.txt": "".join(f"{j.clip_id} {j.label}\n" for j in jobs if j.split == "train"),
        "val_element.txt": "".join(f"{j.clip_id} {j.label}\n" for j in jobs if j.split == "val"),
    }
    digests = {name: _write_text(out / name, text) for name, text in files.items()}
    digests["annotation.json"] = _write_json(out / "annotation.json", annotation)
    return digests


def _write_broadcast_lists(out: Path, videos: list[tuple]) -> dict[str, str]:
    """``broadcast/annotation.json`` (FineGym nesting) and ``broadcast/element_list.txt`` (``<clip id> <label>``)."""
    annotation = {yid: events for yid, _, events, _ in videos}
    lines = "".join(f"{clip_id} {label}\n" for _, _, _, elements in videos for clip_id, label in elements)
    return {
        "broadcast/annotation.json": _write_json(out / "broadcast" / "annotation.json", annotation),
        "broadcast/element_list.txt": _write_text(out / "broadcast" / "element_list.txt", lines),
    }


def dataset_identity(folder: str | os.PathLike) -> dict:
    """``{"syngym_version", "seed", "size", "content_sha256"}`` of a SynGym folder, read from its manifest.

    Raises :class:`~common.errors.DataError` when the folder has no manifest or was written by another
    version of the generator: numbers measured on it would describe other clips than this code's (a benchmark
    records this identity next to its results, so a reader can tell which dataset they came from).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "not a folder: give the SynGym folder written by `sefar data synth --out DIR`")
    path = folder / "manifest.json"
    manifest = read_json_object(path, missing=f"no SynGym manifest: generate the data with `sefar data synth --out {folder}`")
    version = manifest.get("version")
    if version != VERSION:
        raise DataError(path, f"SynGym version {version!r}, but this code writes version {VERSION}: regenerate the "
                              f"folder with `sefar data synth --out {folder}`")
    return {"syngym_version": version, "seed": manifest.get("seed"), "size": manifest.get("size"),
            "content_sha256": manifest.get("content_sha256")}


def format_summary(summary: dict) -> str:
    """A few human-readable lines about a :func:`synthesize` summary."""
    train, val = summary["splits"]["train"], summary["splits"]["val"]
    events = ", ".join(f"{n} {e}" for e, n in summary["events"].items())
    lines = [
        f"SynGym v{summary['version']} ({summary['size']}, seed {summary['seed']}): {train['clips']:,} train + "
        f"{val['clips']:,} val clips, {summary['num_classes']} classes ({events}), "
        f"{len(summary['direction_pairs'])} forward/backward pairs",
        f"  {summary['frame_size'][0]}x{summary['frame_size'][1]} px at {summary['fps']} fps, "
        f"{summary['frames_per_clip'][0]}-{summary['frames_per_clip'][1]} frames per clip; "
        f"{summary['broadcast']['videos']} broadcast videos ({summary['broadcast']['elements']} elements)",
        f"  content sha256 {summary['content_sha256'][:16]}...",
    ]
    if "out" in summary:
        lines.append(f"  written to {summary['out']} in {summary['wall_time_s']:.1f} s "
                     f"with {summary['workers']} workers")
    return "\n".join(lines)
