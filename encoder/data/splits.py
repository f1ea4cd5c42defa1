"""Labeled video lists and reproducible labeled/unlabeled splits for semi-supervised training.

List format (the one the SeFAR reference ships, e.g. ``all99_5/labeled.csv``): one clip per line,

    <path> <label>                  e.g. ``/root/video/A0xAXXysHUo_E_002184_002237_A_0035_0036.mp4 93``
    <path> <label> <start> <end>    optional trim of the video, in seconds
    <path>,<label>[,<start>,<end>]  the same, comma-separated

``label`` is a 0-based class index. LF or CRLF line endings; blank lines and ``#`` comments are skipped; a header
line ``path label`` / ``path,label`` on line 1 is skipped. The path is everything before the last fields, so
paths may contain spaces.

A split folder (written by :func:`write_split`) holds ``labeled.txt`` and ``unlabeled.txt`` in that format and a
``split.json`` with the ratio, seed, method and counts, so a run can name the exact clips it trained on.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import ConfigError, DataError, ListFormatError
from common.jsonio import dumps, read_json_object
from common.textio import read_text_lines, write_text_atomic

SPLIT_METHODS = ("uniform", "stratified")
LABELED_FILE = "labeled.txt"
UNLABELED_FILE = "unlabeled.txt"
SPLIT_FILE = "split.json"

# Labels are class indices: no dataset has anywhere near this many classes (FineGym 530, ImageNet-21k 21,843).
# A larger label is a typo or a corrupt line; accepting it would size per-class tables by it.
MAX_LABEL = 99_999

_WINDOWS_ABS = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


@dataclass(frozen=True)
class Sample:
    """One clip of a list.

    Attributes:
        path: video file or frame folder, as written in the list (``str``; see :func:`resolve_paths`).
        label: 0-based class index.
        start, end: optional trim inside the video in seconds (both set or both ``None``).
    """

    path: str
    label: int
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class Split:
    """A labeled/unlabeled partition of one list; both keep the order of the source list."""

    labeled: list[Sample]
    unlabeled: list[Sample]


def parse_label(token: str, path: str | os.PathLike, line: int) -> int:
    """A 0-based integer class index, or a :class:`ListFormatError` naming ``path:line``."""
    try:
        label = int(token)
    except ValueError:
        raise ListFormatError(path, f"label {token!r} is not an integer class index", line) from None
    if label < 0:
        raise ListFormatError(path, f"label {label} is negative", line)
    if label > MAX_LABEL:
        shown = token if len(token) <= 24 else token[:21] + "..."
        raise ListFormatError(path, f"label {shown} is too large: class indices go up to {MAX_LABEL}", line)
    return label


def parse_trim(start: str, end: str, path: str | os.PathLike, line: int) -> tuple[float, float]:
    """``(start, end)`` seconds with ``0 <= start < end``, or a :class:`ListFormatError`."""
    try:
        s, e = float(start), float(end)
    except ValueError:
        raise ListFormatError(path, f"start/end {start!r}, {end!r} are not numbers of seconds", line) from None
    if not (math.isfinite(s) and math.isfinite(e)) or s < 0 or e <= s:
        raise ListFormatError(path, f"bad trim {s:g}..{e:g} s: need 0 <= start < end", line)
    return s, e


def _is_int(token: str) -> bool:
    return token.lstrip("+-").isdigit()


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _parse_sample(line: str, path: Path, lineno: int) -> Sample:
    """Parse one non-blank line of a ``path label [start end]`` list (spaces or commas)."""
    tokens = line.replace(",", " ").split()
    if len(tokens) == 3 and all(_is_number(t) for t in tokens[1:]):
        expected = "expected '<path> <label>' or '<path> <label> <start> <end>'"
        raise ListFormatError(path, f"{expected}, got {line!r}", lineno)
    for sep in (None, ","):
        fields = [f.strip() for f in line.rsplit(sep, 3)]
        if len(fields) == 4 and _is_int(fields[1]) and _is_number(fields[2]) and _is_number(fields[3]):
            start, end = parse_trim(fields[2], fields[3], path, lineno)
            return Sample(fields[0], parse_label(fields[1], path, lineno), start, end)
        fields = [f.strip() for f in line.rsplit(sep, 1)]
        if len(fields) == 2 and fields[0] and _is_int(fields[1]):
            return Sample(fields[0], parse_label(fields[1], path, lineno))
    if len(tokens) >= 2:
        raise ListFormatError(path, f"label {tokens[-1]!r} is not an integer class index", lineno)
    raise ListFormatError(path, f"expected '<path> <label>' or '<path>,<label>', got {line!r}", lineno)


def _is_header(line: str) -> bool:
    fields = [f.strip().lower() for f in re.split(r"[,\s]+", line.strip())]
    return fields[:2] == ["path", "label"]


def read_samples(
    path: str | os.PathLike, *, allow_empty: bool = False, num_classes: int | None = None
) -> list[Sample]:
    """Read a ``path label [start end]`` list (format in the module docstring).

    Raises:
        ListFormatError: a malformed line, a label ``>= num_classes`` (when given), a repeated clip (same path and
            trim: ``path:line: ... duplicate of line N``), or an empty list unless ``allow_empty``.
    """
    return [s for _, s in read_numbered_samples(path, allow_empty=allow_empty, num_classes=num_classes)]


def read_numbered_samples(
    path: str | os.PathLike, *, allow_empty: bool = False, num_classes: int | None = None
) -> list[tuple[int, Sample]]:
    """:func:`read_samples` with the 1-based line number of each sample: ``[(line, sample), ...]``."""
    path = Path(path)
    samples: list[tuple[int, Sample]] = []
    first_line: dict[tuple[str, float | None, float | None], int] = {}
    for lineno, raw in enumerate(read_text_lines(path), start=1):
        line = raw.strip()
        if not line or line.startswith("#") or (not samples and _is_header(line)):
            continue
        sample = _parse_sample(line, path, lineno)
        if num_classes is not None and sample.label >= num_classes:
            raise ListFormatError(path, f"label {sample.label} is out of range for {num_classes} classes", lineno)
        key = (sample.path, sample.start, sample.end)
        if key in first_line:
            raise ListFormatError(path, f"{sample.path!r} is a duplicate of line {first_line[key]}", lineno)
        first_line[key] = lineno
        samples.append((lineno, sample))
    if not samples and not allow_empty:
        raise ListFormatError(path, "the list has no samples")
    return samples


def format_samples(samples: Sequence[Sample]) -> str:
    """The text of a list: ``path label`` per line, plus `` start end`` for trimmed samples."""
    lines = []
    for s in samples:
        trim = "" if s.start is None else f" {s.start:g} {s.end:g}"
        lines.append(f"{s.path} {s.label}{trim}\n")
    return "".join(lines)


def write_samples(path: str | os.PathLike, samples: Sequence[Sample]) -> None:
    """Write ``samples`` as a ``path label [start end]`` list (LF endings), atomically."""
    write_text_atomic(path, format_samples(samples))


def _is_absolute(path: str) -> bool:
    return path.startswith("/") or bool(_WINDOWS_ABS.match(path))


def resolve_paths(samples: Sequence[Sample], root: str | os.PathLike) -> list[Sample]:
    """Map list paths onto a local video folder.

    Absolute paths (``/root/video/<clip id>.mp4`` in the SeFAR lists, or ``C:\\...``) keep only their file name:
    ``<root>/<clip id>.mp4``. Relative paths (``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi`` in UCF101 lists)
    are joined to ``root``. Back-slashes count as separators. Labels and trims are kept.
    """
    root = Path(root)
    out = []
    for s in samples:
        parts = [p for p in re.split(r"[\\/]", s.path) if p]
        rel = parts[-1:] if _is_absolute(s.path) else parts
        out.append(Sample(os.fspath(root.joinpath(*rel)), s.label, s.start, s.end))
    return out


def _check_split_args(ratio: float, method: str, n: int) -> None:
    problems = []
    if not 0.0 < ratio < 1.0:
        problems.append(f"ratio={ratio} must be in (0, 1), e.g. 0.05 for 5% labeled clips")
    if method not in SPLIT_METHODS:
        problems.append(f"method={method!r} must be one of {', '.join(SPLIT_METHODS)}")
    if n < 2:
        problems.append(f"need at least 2 samples to split, got {n}")
    if problems:
        raise ConfigError("; ".join(problems))


def _count(ratio: float, n: int) -> int:
    """Labeled clips out of ``n``: ``round(ratio * n)`` (halves up), at least 1."""
    return max(1, math.floor(ratio * n + 0.5))


def make_split(samples: Sequence[Sample], ratio: float, seed: int = 0, method: str = "uniform") -> Split:
    """Pick ``ratio`` of ``samples`` as labeled, the rest unlabeled, deterministically from ``seed``.

    ``uniform``: ``round(ratio * N)`` clips drawn uniformly at random (the SeFAR reference's way; rare classes
    may get none). ``stratified``: ``max(1, round(ratio * N_c))`` clips drawn per class ``c``, so every class has
    at least one labeled clip. Both outputs keep the order of ``samples``.
    """
    _check_split_args(ratio, method, len(samples))
    rng = random.Random(seed)
    if method == "uniform":
        chosen = set(rng.sample(range(len(samples)), _count(ratio, len(samples))))
    else:
        by_class: dict[int, list[int]] = defaultdict(list)
        for i, s in enumerate(samples):
            by_class[s.label].append(i)
        chosen = set()
        for label in sorted(by_class):
            members = by_class[label]
            chosen.update(rng.sample(members, _count(ratio, len(members))))
    labeled = [s for i, s in enumerate(samples) if i in chosen]
    unlabeled = [s for i, s in enumerate(samples) if i not in chosen]
    return Split(labeled, unlabeled)


def write_split(
    out_dir: str | os.PathLike,
    split: Split,
    *,
    ratio: float,
    seed: int,
    method: str,
    source: str | None = None,
) -> Path:
    """Write ``labeled.txt``, ``unlabeled.txt`` and ``split.json`` (last) into ``out_dir``; returns the folder.

    ``split.json``: ``{"ratio", "seed", "method", "source", "num_labeled", "num_unlabeled",
    "labeled_per_class": {"<label>": count}}``.
    """
    out = Path(out_dir)
    write_samples(out / LABELED_FILE, split.labeled)
    write_samples(out / UNLABELED_FILE, split.unlabeled)
    per_class = Counter(s.label for s in split.labeled)
    meta = {
        "ratio": ratio,
        "seed": seed,
        "method": method,
        "source": source,
        "num_labeled": len(split.labeled),
        "num_unlabeled": len(split.unlabeled),
        "labeled_per_class": {str(k): per_class[k] for k in sorted(per_class)},
    }
    write_text_atomic(out / SPLIT_FILE, dumps(meta, indent=2) + "\n")
    return out


def split_list(
    list_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    ratio: float,
    seed: int = 0,
    method: str = "uniform",
    num_classes: int | None = None,
) -> Split:
    """Read a list (labels checked against ``num_classes`` when given), split it with :func:`make_split` and
    :func:`write_split` it into ``out_dir``."""
    split = make_split(read_samples(list_path, num_classes=num_classes), ratio, seed, method)
    write_split(out_dir, split, ratio=ratio, seed=seed, method=method, source=os.fspath(list_path))
    return split


def read_split(split_dir: str | os.PathLike) -> Split:
    """Read a folder written by :func:`write_split`, checking the lists against the counts in ``split.json``."""
    split_dir = Path(split_dir)
    meta_path = split_dir / SPLIT_FILE
    meta = read_json_object(meta_path, "missing: not a split folder written by write_split")
    split = Split(read_samples(split_dir / LABELED_FILE), read_samples(split_dir / UNLABELED_FILE, allow_empty=True))
    found = (len(split.labeled), len(split.unlabeled))
    expected = (meta.get("num_labeled"), meta.get("num_unlabeled"))
    if found != expected:
        raise DataError(meta_path, f"counts {expected} (labeled, unlabeled) do not match the lists' {found}")
    return split
