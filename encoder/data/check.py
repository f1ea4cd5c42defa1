"""``sefar data check``: is a dataset folder or list file usable for training?

It parses every list, checks labels against the class list (a list's classes come from the categories file
beside it when there is one), looks for every video and (unless told not to) checks each one with
:func:`encoder.data.video.verify_video`: the quick check compares the container's frame count with what the
reader finds and decodes the first and last frame; the deep check decodes every frame. Missing and unreadable
clips are counted with their one-line reasons. Two entries that map to one clip id (the key of feature caches
and predictions) or to one file are problems too. Recognised layouts of ``PATH``:

- a list file (``path label``, CSV with header, JSONL: see :mod:`encoder.data.lists`);
- a FineGym folder: ``<name>_categories.txt`` + ``<name>_*element*.txt`` lists as released, or SynGym's
  ``categories.txt`` + ``train_element.txt`` / ``val_element.txt``; clips are found by id
  (``<clip id>.<mp4|mkv|webm|avi|mov|m4v>``) anywhere under the videos root (default: the folder);
- a UCF101 ``ucfTrainTestlist/`` folder (``classInd.txt``), an HMDB51 split folder (``*_test_splitK.txt``);
- a FineDiving folder (``FineDiving_coarse_annotation.pkl`` + ``*_split.pkl``, here or in ``Annotations/``);
- any other folder: every ``*.txt`` / ``*.csv`` / ``*.jsonl`` list in it.

Relative video paths are looked up under ``videos_root`` (default: the folder of the list); with a
``videos_root``, absolute paths keep only their file name (see :func:`encoder.data.splits.resolve_paths`).
"""

from __future__ import annotations

import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from common import finegym
from common.clipid import clip_id
from common.errors import DataError, VideoReadError
from encoder.data import finediving
from encoder.data.lists import VideoList, categories_files, is_class_file, read_hmdb51, read_ucf101, read_video_list
from encoder.data.splits import Sample, resolve_paths
from encoder.data.video import verify_video

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
VIDEO_MODES = ("open", "deep", "exists", "skip")
LIST_SUFFIXES = (".txt", ".csv", ".jsonl")
MAX_SHOWN = 5  # problem lines quote at most this many examples


@dataclass
class ListReport:
    """What was found for one list.

    ``class_counts`` maps a label to its number of clips; ``classes[label]`` names it. ``missing`` holds paths
    that do not exist; ``unreadable`` one line per clip that exists but is not whole (``"<path>: <reason>"``);
    ``collisions`` one line per entry that shares a clip id or a file with an earlier one.
    """

    name: str
    num_samples: int = 0
    classes: list[str] = field(default_factory=list)
    class_counts: dict[int, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    collisions: list[str] = field(default_factory=list)
    error: str | None = None

    def problems(self) -> list[str]:
        if self.error is not None:
            return [self.error]
        if self.num_samples == 0:
            return [f"{self.name}: the list has no samples"]
        out = []
        if self.missing:
            out.append(f"{self.name}: {len(self.missing)} of {self.num_samples} videos missing, e.g. "
                       + ", ".join(self.missing[:MAX_SHOWN]))
        out.extend(self.unreadable[:MAX_SHOWN])
        if len(self.unreadable) > MAX_SHOWN:
            out.append(f"{self.name}: ... {len(self.unreadable) - MAX_SHOWN} more unreadable videos")
        out.extend(f"{self.name}: {c}" for c in self.collisions[:MAX_SHOWN])
        if len(self.collisions) > MAX_SHOWN:
            out.append(f"{self.name}: ... {len(self.collisions) - MAX_SHOWN} more entries sharing a clip id or file")
        return out

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "num_samples": self.num_samples,
            "num_classes": len(self.classes),
            "classes": self.classes,
            "class_counts": {str(k): v for k, v in sorted(self.class_counts.items())},
            "missing": self.missing,
            "unreadable": self.unreadable,
            "collisions": self.collisions,
            "error": self.error,
        }


@dataclass
class CheckReport:
    """The result of :func:`check_dataset`; ``ok`` when no problem was found."""

    path: str
    kind: str
    videos: str  # one of VIDEO_MODES
    lists: list[ListReport] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)  # problems not tied to one list
    seconds: float = 0.0  # time spent checking videos

    def problems(self) -> list[str]:
        """Every problem once (the train and test lists of an HMDB51 split read the same file)."""
        return list(dict.fromkeys(self.issues + [p for lr in self.lists for p in lr.problems()]))

    @property
    def ok(self) -> bool:
        return not self.problems()

    def to_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind, "videos": self.videos, "ok": self.ok,
                "seconds": round(self.seconds, 3), "problems": self.problems(),
                "lists": [lr.to_dict() for lr in self.lists]}


@dataclass(frozen=True)
class _Source:
    """One list to check: a name, how to read it, and how to find its videos."""

    name: str
    read: Callable[[], VideoList]
    locate: Callable[[Sample], Path | None]


def _relative_locator(base: Path, videos_root: Path | None) -> Callable[[Sample], Path]:
    def locate(sample: Sample) -> Path:
        if videos_root is not None:
            return Path(resolve_paths([sample], videos_root)[0].path)
        return base / sample.path  # an absolute sample path stays absolute
    return locate


def _video_index(root: Path) -> dict[str, Path]:
    """``{file stem: path}`` of every video file under ``root`` (first found wins)."""
    index: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file():
            index.setdefault(p.stem, p)
    return index


def _finegym_sources(folder: Path, videos_root: Path | None, issues: list[str]) -> list[_Source]:
    categories = categories_files(folder)
    index: dict[str, Path] | None = None

    def locate(sample: Sample) -> Path | None:
        nonlocal index
        if index is None:
            index = _video_index(videos_root or folder)
        return index.get(sample.path)

    sources = []
    for lst in sorted(folder.glob("*_*element*.txt")):
        prefix = next((k for k in categories if k and lst.name.startswith(k + "_")), None)
        if prefix is None and ("" in categories or len(categories) == 1):
            prefix = "" if "" in categories else next(iter(categories))
        if prefix is None:
            issues.append(f"{lst}: no matching '<name>_categories.txt' for this element list")
            continue
        sources.append(_Source(lst.name, lambda lst=lst, cat=categories[prefix]: _read_finegym(lst, cat), locate))
    return sources


def _read_finegym(list_path: Path, categories_path: Path) -> VideoList:
    names = [c.full_name for c in finegym.read_categories(categories_path)]
    items = finegym.read_element_list(list_path, num_classes=len(names), categories_name=categories_path.name)
    return VideoList([Sample(clip, label) for clip, label in items], names)


def _finediving_sources(folder: Path, videos_root: Path | None) -> list[_Source]:
    annotations = next(p for p in (folder, folder / "Annotations") if (p / "FineDiving_coarse_annotation.pkl").exists())
    coarse = annotations / "FineDiving_coarse_annotation.pkl"
    frames = videos_root or next((p for p in sorted(folder.glob("FINADiving*")) if p.is_dir()), folder)
    return [_Source(split.name, lambda split=split: finediving.read_finediving(coarse, split, frames),
                    lambda s: Path(s.path)) for split in sorted(annotations.glob("*_split.pkl"))]


def _detect(path: Path) -> str:
    if path.is_file():
        return "list"
    if categories_files(path) and any(path.glob("*_*element*.txt")):
        return "finegym"
    if (path / "classInd.txt").is_file():
        return "ucf101"
    if any(path.glob("*_test_split[0-9].txt")):
        return "hmdb51"
    if any((p / "FineDiving_coarse_annotation.pkl").is_file() for p in (path, path / "Annotations")):
        return "finediving"
    return "lists"


def _official_sources(kind: str, folder: Path, videos_root: Path | None) -> list[_Source]:
    """UCF101 / HMDB51: every split file present, train and test."""
    reader = read_ucf101 if kind == "ucf101" else read_hmdb51
    pattern = "trainlist0{}.txt" if kind == "ucf101" else "*_test_split{}.txt"
    locate = _relative_locator(videos_root or folder, None)
    return [_Source(f"split{k}/{subset}", lambda k=k, subset=subset: reader(folder, k, subset), locate)
            for k in (1, 2, 3) if any(folder.glob(pattern.format(k))) for subset in ("train", "test")]


def _sources(path: Path, kind: str, videos_root: Path | None, issues: list[str]) -> list[_Source]:
    if kind == "list":
        return [_Source(path.name, lambda: read_video_list(path), _relative_locator(path.parent, videos_root))]
    if kind == "finegym":
        return _finegym_sources(path, videos_root, issues)
    if kind in ("ucf101", "hmdb51"):
        return _official_sources(kind, path, videos_root)
    if kind == "finediving":
        return _finediving_sources(path, videos_root)
    lists = [p for p in sorted(path.iterdir())
             if p.is_file() and p.suffix.lower() in LIST_SUFFIXES and not is_class_file(p)]
    if not lists:
        issues.append(f"{path}: no list files (*.txt, *.csv, *.jsonl) and no known dataset layout")
    return [_Source(p.name, lambda p=p: read_video_list(p), _relative_locator(path, videos_root)) for p in lists]


def _check_video(path: Path, sample: Sample, deep: bool) -> str | None:
    """``None`` when the clip is whole (see :func:`encoder.data.video.verify_video`), else its one-line reason."""
    try:
        verify_video(path, start=sample.start, end=sample.end, deep=deep)
    except VideoReadError as err:
        return str(err)
    return None


def _collisions(samples: list[Sample], files: list[Path | None]) -> list[str]:
    """Entries that map to one clip id (which keys feature caches and predictions) or to one existing file."""
    out = []
    by_id: dict[str, int] = {}
    by_file: dict[tuple[Path, float | None, float | None], int] = {}
    for i, (sample, file) in enumerate(zip(samples, files)):
        key = clip_id(sample.path, sample.start, sample.end)
        if key in by_id:
            out.append(f"entries {by_id[key] + 1} and {i + 1} ({samples[by_id[key]].path!r}, {sample.path!r}) "
                       f"map to the same clip id {key!r}")
            continue
        by_id[key] = i
        if file is not None and file.exists():
            real = (file.resolve(), sample.start, sample.end)
            if real in by_file:
                j = by_file[real]
                out.append(f"entries {j + 1} and {i + 1} ({samples[j].path!r}, {sample.path!r}) are the same file")
            by_file.setdefault(real, i)
    return out


def _check_list(source: _Source, videos: str, progress: bool) -> ListReport:
    report = ListReport(source.name)
    try:
        vl = source.read()
    except DataError as err:
        report.error = str(err)
        return report
    except OSError as err:  # a list file named by the layout is missing or unreadable
        report.error = f"{err.filename}: {err.strerror}"
        return report
    report.num_samples, report.classes = len(vl.samples), vl.classes
    report.class_counts = dict(Counter(s.label for s in vl.samples))
    located = [source.locate(s) for s in vl.samples] if videos != "skip" else [None] * len(vl.samples)
    report.collisions = _collisions(vl.samples, located)
    if videos == "skip":
        return report
    for sample, path in _progress(list(zip(vl.samples, located)), f"checking {source.name}", progress):
        if path is None or not path.exists():
            report.missing.append(str(path or sample.path))
        elif videos in ("open", "deep") and (reason := _check_video(path, sample, videos == "deep")) is not None:
            report.unreadable.append(reason)
    return report


def _progress(items: list, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="clip", leave=False)


def check_dataset(
    path: str | os.PathLike,
    *,
    videos_root: str | os.PathLike | None = None,
    videos: str = "open",
    progress: bool = False,
) -> CheckReport:
    """Check a dataset folder or list file (layouts in the module docstring).

    Args:
        videos: ``"open"`` (find every clip and check it quickly: frame count, first and last frame), ``"deep"``
            (also decode every frame), ``"exists"`` (only check the files exist) or ``"skip"`` (lists only).
        progress: show a progress bar on stderr while checking videos.
    """
    if videos not in VIDEO_MODES:
        raise ValueError(f"videos={videos!r} must be one of {', '.join(VIDEO_MODES)}")
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file or folder")
    root = Path(videos_root) if videos_root is not None else None
    if root is not None and not root.is_dir():
        raise DataError(root, "videos root is not a folder")
    kind = _detect(path)
    report = CheckReport(str(path), kind, videos)
    began = time.perf_counter()
    for source in _sources(path, kind, root, report.issues):
        report.lists.append(_check_list(source, videos, progress))
    if not report.lists and not report.issues:  # e.g. a UCF101 folder with classInd.txt but no split lists
        report.issues.append(f"{path}: found no list to check in this {kind} layout")
    report.seconds = time.perf_counter() - began
    return report


def _per_class(lr: ListReport) -> str:
    if not lr.class_counts:
        return "-"
    counts = [lr.class_counts.get(i, 0) for i in range(len(lr.classes))] or list(lr.class_counts.values())
    return f"{min(counts)}/{statistics.median(counts):g}/{max(counts)}"


def format_report(report: CheckReport) -> str:
    """A human-readable table: one row per list, then every problem, then a verdict line."""
    rows = [("list", "samples", "classes", "per class min/med/max", "missing", "unreadable")]
    for lr in report.lists:
        if lr.error is not None:
            rows.append((lr.name, "error", "-", "-", "-", "-"))
            continue
        checked = report.videos != "skip"
        rows.append((lr.name, str(lr.num_samples), f"{len(lr.class_counts)}/{len(lr.classes)}", _per_class(lr),
                     str(len(lr.missing)) if checked else "-",
                     str(len(lr.unreadable)) if report.videos in ("open", "deep") else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{report.path} ({report.kind}; videos: {report.videos})"]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
              for r in rows]
    problems = report.problems()
    lines += [f"problem: {p}" for p in problems]
    if report.videos == "deep":
        clips = sum(lr.num_samples - len(lr.missing) for lr in report.lists if lr.error is None)
        lines.append(f"deep check: decoded every frame of {clips} clips in {report.seconds:.1f} s")
    lines.append("OK" if not problems else f"{len(problems)} problem(s) found")
    return "\n".join(lines)
