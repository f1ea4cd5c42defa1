"""Cut downloaded FineGym broadcasts into event clips, then event clips into element clips.

``sefar data prepare finegym --videos DIR --annotations JSON --out DIR`` does what users otherwise do with
mmaction2's FineGym scripts, in two stages so that every long video is decoded once:

1. every ``<videos>/<youtube_id>.{mp4,mkv,webm}`` is decoded once and trimmed into its events,
   ``<out>/events/<youtube_id>_E_XXXXXX_YYYYYY.mp4``, using the absolute event timestamps of the annotation;
2. every event clip is decoded once and cut into its elements, ``<out>/elements/<clip id>.mp4``, using the element
   timestamps relative to the event start (first stage start to last stage end for vaults).

A frame at time ``t`` (seconds from the stream start) belongs to a clip ``[start, end)`` when
``start <= t < end``. Clips are H.264 (yuv420p) MP4 at the source frame rate, resized in stage 1 so that the
short side has ``short_side`` pixels (sizes rounded to even numbers, as 4:2:0 needs).

Sources are processed in parallel processes. The run is resumable: an existing output that opens and has frames is
kept; outputs are written to a hidden temporary file in the same folder and renamed when complete, so a killed
run leaves no half clip (leftover temporaries are removed by the next run; do not run two prepares on one
``out`` at once). Missing and unreadable sources and clips that could not be made are listed in the returned
:class:`PrepareSummary`, also written to ``<out>/prepare_summary.json``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from common.errors import VideoReadError
from common.finegym import ElementAnnotation, parse_clip_id, read_annotations
from common.jsonio import dumps
from common.textio import write_text_atomic
from encoder.data.video import video_info

EVENTS_DIR = "events"
ELEMENTS_DIR = "elements"
SUMMARY_FILE = "prepare_summary.json"
SOURCE_SUFFIXES = (".mp4", ".mkv", ".webm")
TMP_MARK = ".tmp"
_EPS = 1e-6  # seconds: absorbs rounding of pts * time_base


# ------------------------------------------------------------------------------------------------ writing


def _temp_path(path: Path) -> Path:
    """Hidden temporary sibling of ``path`` that keeps its suffix (so the muxer is chosen from it)."""
    return path.with_name(f".{path.stem}.{os.getpid()}{TMP_MARK}{path.suffix}")


def _even_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Output ``(width, height)``: scaled so min side == ``short_side`` (when given), each rounded to even."""
    if short_side:
        scale = short_side / min(width, height)
        width, height = width * scale, height * scale
    return max(2, round(width / 2) * 2), max(2, round(height / 2) * 2)


# x264 settings under which the bitstream is a function of the frames alone, so that a rerun (after an interrupt)
# writes the same bytes: one thread, no mb-tree (it read uninitialised memory), no version
# strings in the headers.
X264_OPTIONS = {"preset": "veryfast", "threads": "1", "flags": "+bitexact", "x264-params": "mbtree=0"}


class ClipWriter:
    """Streams frames into an H.264 MP4 written to a temporary file and renamed on :meth:`close`.

    Frames are ``av.VideoFrame`` in any format or size; each is converted to ``width x height`` yuv420p and
    time-stamped ``i / rate``.
    """

    def __init__(self, path: Path, rate: Fraction, width: int, height: int, crf: int = 18):
        import av

        self.path, self.rate, self.count = path, rate, 0
        self.width, self.height = width, height
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _temp_path(path)
        self._container = av.open(str(self._tmp), "w", format="mp4", options={"fflags": "+bitexact"})
        self._stream = self._container.add_stream("libx264", rate=rate, options={"crf": str(crf), **X264_OPTIONS})
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self._stream.codec_context.time_base = 1 / rate

    def write(self, frame) -> None:
        out = frame.reformat(width=self.width, height=self.height, format="yuv420p")
        out.pts, out.time_base = self.count, 1 / self.rate
        for packet in self._stream.encode(out):
            self._container.mux(packet)
        self.count += 1

    def close(self) -> None:
        """Flush, close and move the finished file into place (removes it instead when no frame was written)."""
        if self.count == 0:
            self.abort()
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Discard the temporary file."""
        try:
            self._container.close()
        except Exception:  # closing a broken muxer may fail; the file is removed either way
            pass
        self._tmp.unlink(missing_ok=True)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = 18) -> Path:
    """Write uint8 RGB frames ``(T, H, W, 3)`` as H.264 yuv420p at ``fps``, atomically.

    The container follows the suffix (``.mp4``, ``.mkv``). Odd widths/heights lose their last pixel column/row
    (4:2:0 needs even sizes).
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be non-empty uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    path = Path(path)
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    writer = ClipWriter(path, Fraction(fps).limit_denominator(10_000), w, h, crf)
    try:
        for img in frames[:, :h, :w]:  # (H, W, 3)
            writer.write(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24"))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return path


def is_complete(path: Path) -> bool:
    """An output worth keeping: it exists, opens and has at least one frame."""
    try:
        return video_info(path).num_frames > 0
    except VideoReadError:
        return False


# ------------------------------------------------------------------------------------------------ cutting


@dataclass(frozen=True)
class ClipSpec:
    """One output clip ``<out_dir>/<name>.mp4`` covering ``[start, end)`` seconds of its source."""

    name: str
    start: float
    end: float


@dataclass(frozen=True)
class SourceJob:
    """All clips cut from one source video (``path`` is ``None`` when the source is not there)."""

    source: str
    path: Path | None
    out_dir: Path
    clips: tuple[ClipSpec, ...]
    short_side: int | None
    missing_reason: str


@dataclass
class SourceResult:
    """Outcome of one :class:`SourceJob`: per-clip ``written`` / ``skipped`` / ``failed`` (name -> reason)."""

    source: str
    status: str  # "ok", "missing" or "unreadable"
    reason: str | None = None
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


def _decode_clips(job: SourceJob, pending: list[ClipSpec], result: SourceResult) -> None:
    """Decode ``job.path`` once from the first pending start, feeding each frame to the clips containing it.

    A clip is finished (renamed into place) as soon as the stream passes its end, so few encoders are open at once.
    """
    import av

    writers: dict[str, ClipWriter] = {}
    try:
        with av.open(str(job.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            offset = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            first, last = min(c.start for c in pending), max(c.end for c in pending)
            container.seek(int((first + offset) / stream.time_base), stream=stream, backward=True)
            size = _even_size(stream.codec_context.width, stream.codec_context.height, job.short_side)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * frame.time_base) - offset
                if t >= last - _EPS:
                    break
                for clip in pending:
                    if t >= clip.end - _EPS and clip.name in writers:
                        writers.pop(clip.name).close()
                        result.written.append(clip.name)
                    elif clip.start - _EPS <= t < clip.end - _EPS and clip.name not in result.written:
                        if clip.name not in writers:
                            writers[clip.name] = ClipWriter(job.out_dir / f"{clip.name}.mp4", rate, *size)
                        writers[clip.name].write(frame)
    except (av.FFmpegError, OSError, IndexError, ValueError) as err:
        for writer in writers.values():
            writer.abort()
        raise VideoReadError(job.path, f"cannot decode: {_one_line(err)}") from err
    for clip in pending:
        if clip.name in writers:
            writers.pop(clip.name).close()
            result.written.append(clip.name)
        elif clip.name not in result.written:
            result.failed[clip.name] = f"no frames in [{clip.start:g}, {clip.end:g}) s of {job.path.name}"


def cut_clips(job: SourceJob) -> SourceResult:
    """Make the clips of one source that are not already complete (runs in a worker process)."""
    result = SourceResult(job.source, "ok")
    pending = []
    for clip in job.clips:
        if is_complete(job.out_dir / f"{clip.name}.mp4"):
            result.skipped.append(clip.name)
        else:
            pending.append(clip)
    if not pending:
        return result
    if job.path is None or not job.path.is_file():
        result.status, result.reason = "missing", job.missing_reason
    else:
        try:
            _decode_clips(job, pending, result)
        except VideoReadError as err:
            result.status, result.reason = "unreadable", str(err)
    if result.status != "ok":
        result.failed.update({c.name: result.reason for c in pending if c.name not in result.written})
    return result


# ------------------------------------------------------------------------------------------------ planning


def find_source(videos: Path, youtube_id: str) -> Path | None:
    """``<videos>/<youtube_id>.mp4`` (or ``.mkv`` / ``.webm``), the first that exists."""
    return next((p for p in (videos / f"{youtube_id}{s}" for s in SOURCE_SUFFIXES) if p.is_file()), None)


def event_name(element: ElementAnnotation) -> str:
    """``<youtube_id>_E_XXXXXX_YYYYYY``: the event clip's file stem."""
    return f"{element.youtube_id}_{parse_clip_id(element.clip_id).event_key}"


def plan_events(
    elements: Sequence[ElementAnnotation], videos: Path, out: Path, short_side: int | None
) -> list[SourceJob]:
    """Stage 1: one job per YouTube video, cutting each of its events (absolute timestamps)."""
    events: dict[str, dict[str, ClipSpec]] = defaultdict(dict)
    for el in elements:
        events[el.youtube_id].setdefault(event_name(el), ClipSpec(event_name(el), el.event_start, el.event_end))
    suffixes = ",".join(s.lstrip(".") for s in SOURCE_SUFFIXES)
    return [
        SourceJob(yt, find_source(videos, yt), out / EVENTS_DIR, tuple(clips.values()), short_side,
                  f"source video missing: {videos / yt}.{{{suffixes}}}")
        for yt, clips in events.items()
    ]


def plan_elements(
    elements: Sequence[ElementAnnotation], out: Path, event_failures: dict[str, str]
) -> list[SourceJob]:
    """Stage 2: one job per event clip, cutting each of its elements (timestamps relative to the event)."""
    by_event: dict[str, list[ClipSpec]] = defaultdict(list)
    for el in elements:
        by_event[event_name(el)].append(ClipSpec(el.clip_id, el.start, el.end))
    jobs = []
    for name, clips in by_event.items():
        path = out / EVENTS_DIR / f"{name}.mp4"
        reason = f"event clip {name} unavailable: {event_failures.get(name, 'not found')}"
        jobs.append(SourceJob(name, path, out / ELEMENTS_DIR, tuple(clips), None, reason))
    return jobs


# ------------------------------------------------------------------------------------------------ running


@dataclass
class StageSummary:
    """Counts of one stage; ``failed`` maps a clip name to its one-line reason."""

    written: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    def add(self, result: SourceResult) -> None:
        self.written += len(result.written)
        self.skipped += len(result.skipped)
        self.failed.update(result.failed)


@dataclass
class PrepareSummary:
    """What a prepare run did; ``missing_videos`` are YouTube ids, ``unreadable_videos`` id -> reason."""

    events: StageSummary = field(default_factory=StageSummary)
    elements: StageSummary = field(default_factory=StageSummary)
    missing_videos: list[str] = field(default_factory=list)
    unreadable_videos: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.events.failed or self.elements.failed)

    def to_dict(self) -> dict:
        return {"ok": self.ok, **asdict(self)}


def _run(jobs: list[SourceJob], workers: int, desc: str, progress: bool) -> Iterator[SourceResult]:
    """``cut_clips`` over ``jobs`` in order, in ``workers`` spawned processes when ``workers > 1``."""
    from tqdm import tqdm

    with contextlib.ExitStack() as stack:
        if workers > 1 and len(jobs) > 1:
            context = multiprocessing.get_context("spawn")  # safe whatever threads the parent runs
            pool = stack.enter_context(ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context))
            results: Iterable[SourceResult] = pool.map(cut_clips, jobs)
        else:
            results = map(cut_clips, jobs)
        yield from tqdm(results, total=len(jobs), desc=desc, unit="video", disable=not progress)


def _remove_temporaries(out: Path) -> None:
    for folder in (out / EVENTS_DIR, out / ELEMENTS_DIR):
        if folder.is_dir():
            for p in folder.glob(f".*{TMP_MARK}.*"):
                p.unlink(missing_ok=True)


def prepare_finegym(
    videos: str | os.PathLike,
    annotations: str | os.PathLike,
    out: str | os.PathLike,
    *,
    workers: int = 1,
    short_side: int | None = 256,
    progress: bool = False,
) -> PrepareSummary:
    """Run both stages (see the module docstring) and write ``<out>/prepare_summary.json``.

    Args:
        videos: folder of downloaded broadcasts named ``<youtube_id>.{mp4,mkv,webm}``.
        annotations: ``finegym_annotation_info_v1.1.json`` (or a subset in the same nesting).
        short_side: short side of the event clips in pixels; ``None`` keeps the source size.
    """
    videos, out = Path(videos), Path(out)
    if not videos.is_dir():
        raise FileNotFoundError(f"{videos}: videos folder does not exist")
    elements = read_annotations(annotations)
    _remove_temporaries(out)
    summary = PrepareSummary()
    for result in _run(plan_events(elements, videos, out, short_side), workers, "events", progress):
        summary.events.add(result)
        if result.status == "missing":
            summary.missing_videos.append(result.source)
        elif result.status == "unreadable":
            summary.unreadable_videos[result.source] = result.reason
    element_jobs = plan_elements(elements, out, summary.events.failed)
    for result in _run(element_jobs, workers, "elements", progress):
        summary.elements.add(result)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / SUMMARY_FILE, dumps(summary.to_dict(), indent=2) + "\n")
    return summary


def format_summary(summary: PrepareSummary, max_failed: int = 10) -> str:
    """A few lines for the terminal: counts per stage, missing/unreadable sources, the first failures."""
    lines = []
    for stage, s in (("events", summary.events), ("elements", summary.elements)):
        lines.append(f"{stage:9s} written {s.written}, skipped (already done) {s.skipped}, failed {len(s.failed)}")
    if summary.missing_videos:
        lines.append(f"missing source videos ({len(summary.missing_videos)}): " + ", ".join(summary.missing_videos))
    lines += [f"unreadable: {reason}" for reason in summary.unreadable_videos.values()]
    # failures not already explained by a missing or unreadable source above
    own = [(n, r) for s in (summary.events, summary.elements) for n, r in s.failed.items()
           if not r.startswith(("source video missing", "event clip")) and r not in summary.unreadable_videos.values()]
    lines += [f"failed: {name}: {reason}" for name, reason in own[:max_failed]]
    if len(own) > max_failed:
        lines.append(f"... {len(own) - max_failed} more failures in the summary file")
    return "\n".join(lines)
