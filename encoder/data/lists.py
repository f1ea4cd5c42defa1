"""Readers for the common video-list formats: UCF101 and HMDB51 official splits, CSV and JSONL lists.

Every reader returns a :class:`VideoList` (samples with 0-based labels + class names) and reports a malformed
line as one :class:`~common.errors.ListFormatError` ``"<file>:<line>: <what is wrong>"``.

Formats:

- UCF101 (``ucfTrainTestlist/``): ``classInd.txt`` lines ``1 ApplyEyeMakeup`` (1-based, in order);
  ``trainlist0K.txt`` lines ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1``; ``testlist0K.txt`` lines without
  the label (the class is the folder). Labels become 0-based: ``ApplyEyeMakeup`` is 0.
- HMDB51 (``testTrainMulti_7030_splits/``): one ``<class>_test_splitK.txt`` per class, lines
  ``<video>.avi <id>`` with id 1 = train, 2 = test, 0 = unused. Classes are numbered in sorted name order;
  paths are ``<class>/<video>.avi``.
- CSV: a header naming the columns ``path,label`` and optionally ``start,end`` (seconds; other columns ignored).
- JSONL: one object per line, ``{"path": str, "label": int | str, "start"?: float, "end"?: float}``.

In CSV and JSONL lists a label is either an integer class index or a class name; names are numbered in
sorted order unless ``classes`` is given.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common import finegym
from common.errors import DataError, ListFormatError
from common.jsonio import scan_value
from encoder.data.splits import Sample, parse_label, parse_trim, read_numbered_samples
from common.textio import is_plain_int, read_text_lines

HMDB_SPLIT_IDS = {"train": 1, "test": 2}
_HMDB_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<k>\d+)\.txt$")


@dataclass(frozen=True)
class VideoList:
    """Samples with 0-based labels and the class names they index (``classes[label]``)."""

    samples: list[Sample]
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _join(root: str | os.PathLike | None, rel: str) -> str:
    return rel if root is None else os.fspath(Path(root) / rel)


def _check_subset(subset: str, allowed: Iterable[str]) -> None:
    if subset not in allowed:
        raise ValueError(f"subset={subset!r} must be one of {', '.join(allowed)}")


def _content_lines(path: Path) -> Iterable[tuple[int, str]]:
    """``(line number, stripped text)`` of the non-blank lines of a text file."""
    for lineno, raw in enumerate(read_text_lines(path), start=1):
        if raw.strip():
            yield lineno, raw.strip()


def read_class_index(path: str | os.PathLike) -> list[str]:
    """Class names of a UCF101 ``classInd.txt`` (``<1-based index> <name>`` in order); ``names[i]`` is label i."""
    path = Path(path)
    names: list[str] = []
    for lineno, line in _content_lines(path):
        fields = line.split()
        if len(fields) != 2 or not is_plain_int(fields[0]):
            raise ListFormatError(path, f"expected '<index> <class name>', got {line!r}", lineno)
        if int(fields[0]) != len(names) + 1:
            raise ListFormatError(path, f"class index {fields[0]} out of order: expected {len(names) + 1}", lineno)
        if fields[1] in names:
            raise ListFormatError(path, f"class {fields[1]!r} is listed twice", lineno)
        names.append(fields[1])
    if not names:
        raise ListFormatError(path, "no classes")
    return names


def _ucf_sample(
    line: str, classes: Sequence[str], path: Path, lineno: int, root: str | os.PathLike | None
) -> Sample:
    fields = line.split()
    rel = fields[0].replace("\\", "/")
    folder = rel.split("/")[0] if "/" in rel else None
    if len(fields) > 2 or folder is None:
        raise ListFormatError(path, f"expected '<Class>/<video>.avi [<1-based label>]', got {line!r}", lineno)
    if folder not in classes:
        raise ListFormatError(path, f"class folder {folder!r} is not in classInd.txt", lineno)
    label = classes.index(folder)
    if len(fields) == 2:
        given = parse_label(fields[1], path, lineno) - 1
        if given != label:
            raise ListFormatError(path, f"label {fields[1]} does not match the class folder {folder!r}", lineno)
    return Sample(_join(root, rel), label)


def read_ucf101(
    split_dir: str | os.PathLike, split: int = 1, subset: str = "train", root: str | os.PathLike | None = None
) -> VideoList:
    """Read UCF101 split ``split`` (1-3), ``subset`` ``"train"`` or ``"test"``, from ``ucfTrainTestlist/``.

    Sample paths are ``<Class>/<video>.avi`` joined to ``root`` when given.
    """
    _check_subset(subset, ("train", "test"))
    split_dir = Path(split_dir)
    classes = read_class_index(split_dir / "classInd.txt")
    path = split_dir / f"{subset}list{split:02d}.txt"
    samples = [_ucf_sample(line, classes, path, lineno, root) for lineno, line in _content_lines(path)]
    if not samples:
        raise ListFormatError(path, "the list has no samples")
    return VideoList(samples, classes)


def _hmdb_files(split_dir: Path, split: int) -> dict[str, Path]:
    files = {}
    for p in sorted(split_dir.glob(f"*_test_split{split}.txt")):
        match = _HMDB_FILE.match(p.name)
        if match and int(match["k"]) == split:
            files[match["cls"]] = p
    if not files:
        raise DataError(split_dir, f"no HMDB51 split files '<class>_test_split{split}.txt' in this folder")
    return files


def _hmdb_entries(path: Path) -> Iterable[tuple[int, str, int]]:
    """``(line, video, split id)`` of one HMDB51 class file."""
    seen: dict[str, int] = {}
    for lineno, line in _content_lines(path):
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ListFormatError(path, f"expected '<video>.avi <0|1|2>', got {line!r}", lineno)
        if fields[0] in seen:
            raise ListFormatError(path, f"{fields[0]!r} is a duplicate of line {seen[fields[0]]}", lineno)
        seen[fields[0]] = lineno
        yield lineno, fields[0], int(fields[1])


def read_hmdb51(
    split_dir: str | os.PathLike, split: int = 1, subset: str = "train", root: str | os.PathLike | None = None
) -> VideoList:
    """Read HMDB51 split ``split`` (1-3), ``subset`` ``"train"`` (id 1) or ``"test"`` (id 2).

    Classes are the file-name prefixes in sorted order; sample paths are ``<class>/<video>.avi`` joined to
    ``root`` when given.
    """
    _check_subset(subset, HMDB_SPLIT_IDS)
    files = _hmdb_files(Path(split_dir), split)
    classes = sorted(files)
    wanted = HMDB_SPLIT_IDS[subset]
    samples = [
        Sample(_join(root, f"{cls}/{video}"), label)
        for label, cls in enumerate(classes)
        for _, video, split_id in _hmdb_entries(files[cls])
        if split_id == wanted
    ]
    if not samples:
        raise DataError(split_dir, f"split {split} has no {subset} videos")
    return VideoList(samples, classes)


@dataclass(frozen=True)
class _RawEntry:
    """A parsed CSV/JSONL row whose label is not yet mapped to an index."""

    line: int
    path: str
    label: int | str
    start: float | None
    end: float | None


def _map_labels(entries: Sequence[_RawEntry], classes: Sequence[str] | None, path: Path) -> VideoList:
    """Turn integer-or-name labels into indices (see the module docstring); check duplicates."""
    if not entries:
        raise ListFormatError(path, "the list has no samples")
    if classes is None:
        names = sorted({e.label for e in entries if isinstance(e.label, str)})
        indices = [e.label for e in entries if isinstance(e.label, int)]
        if names and indices:
            odd = next(e for e in entries if isinstance(e.label, int))
            raise ListFormatError(path, f"label {odd.label} is an index but other labels are class names", odd.line)
        classes = names or [str(i) for i in range(max(indices) + 1)]
    classes = list(classes)
    position = {name: i for i, name in enumerate(classes)}
    samples, first = [], {}
    for e in entries:
        if isinstance(e.label, str) and e.label not in position:
            raise ListFormatError(path, f"unknown class name {e.label!r}", e.line)
        label = position[e.label] if isinstance(e.label, str) else e.label
        if label >= len(classes):
            raise ListFormatError(path, f"label {label} is out of range for {len(classes)} classes", e.line)
        key = (e.path, e.start, e.end)
        if key in first:
            raise ListFormatError(path, f"{e.path!r} is a duplicate of line {first[key]}", e.line)
        first[key] = e.line
        samples.append(Sample(e.path, label, e.start, e.end))
    return VideoList(samples, classes)


def _label_value(value: object, path: Path, line: int) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ListFormatError(path, f"label {value!r} must be an integer index or a class name", line)
    if isinstance(value, int):
        return parse_label(str(value), path, line)
    value = value.strip()
    if not value:
        raise ListFormatError(path, "empty label", line)
    return parse_label(value, path, line) if value.lstrip("+-").isdigit() else value


def _csv_header(header: list[str], path: Path) -> dict[str, int]:
    columns = {name.strip().lower(): i for i, name in enumerate(header)}
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        raise ListFormatError(path, f"header {header!r} lacks the column(s) {', '.join(missing)}", 1)
    if ("start" in columns) != ("end" in columns):
        raise ListFormatError(path, "header has only one of the columns start, end", 1)
    return columns


def read_csv_list(path: str | os.PathLike, classes: Sequence[str] | None = None) -> VideoList:
    """Read a CSV list with a header row naming ``path``, ``label`` and optionally ``start``, ``end``."""
    path = Path(path)
    rows = csv.reader(io.StringIO("\n".join(read_text_lines(path))))
    header = next(rows, None)
    if header is None:
        raise ListFormatError(path, "empty file: expected a header 'path,label[,start,end]'")
    columns = _csv_header(header, path)
    entries = []
    for row in rows:
        line = rows.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise ListFormatError(path, f"expected {len(header)} fields like the header, got {len(row)}", line)
        start = end = None
        if "start" in columns and (row[columns["start"]].strip() or row[columns["end"]].strip()):
            start, end = parse_trim(row[columns["start"]], row[columns["end"]], path, line)
        file = row[columns["path"]].strip()
        if not file:
            raise ListFormatError(path, "empty path", line)
        entries.append(_RawEntry(line, file, _label_value(row[columns["label"]], path, line), start, end))
    return _map_labels(entries, classes, path)


def _jsonl_entry(text: str, path: Path, line: int) -> _RawEntry:
    obj = scan_value(text, path, line)
    if not isinstance(obj, dict) or not isinstance(obj.get("path"), str) or not obj["path"]:
        raise ListFormatError(path, "expected an object with a non-empty string 'path'", line)
    if "label" not in obj:
        raise ListFormatError(path, "missing 'label'", line)
    start = end = None
    if "start" in obj or "end" in obj:
        if not all(isinstance(obj.get(k), (int, float)) for k in ("start", "end")):
            raise ListFormatError(path, "'start' and 'end' must both be numbers of seconds", line)
        start, end = parse_trim(str(obj["start"]), str(obj["end"]), path, line)
    return _RawEntry(line, obj["path"], _label_value(obj["label"], path, line), start, end)


def read_jsonl_list(path: str | os.PathLike, classes: Sequence[str] | None = None) -> VideoList:
    """Read a JSONL list: one ``{"path", "label"[, "start", "end"]}`` object per non-blank line."""
    path = Path(path)
    entries = [_jsonl_entry(text, path, line) for line, text in _content_lines(path)]
    return _map_labels(entries, classes, path)


def _has_csv_header(path: Path) -> bool:
    first = next((line for _, line in _content_lines(path)), "")
    cells = [c.strip().lower() for c in first.split(",")]
    return len(cells) > 1 and "path" in cells and "label" in cells


CLASS_INDEX_FILE = "classInd.txt"


def categories_files(folder: str | os.PathLike) -> dict[str, Path]:
    """``{prefix: path}`` of the FineGym-style categories files in ``folder``: ``<prefix>_categories.txt``
    (``gym99``, ...) and ``categories.txt`` (prefix ``""``); ``set_categories.txt`` names sets, not classes."""
    return {p.name.removesuffix("categories.txt").removesuffix("_"): p
            for p in sorted(Path(folder).glob("*categories.txt")) if p.name != "set_categories.txt"}


def find_class_file(list_path: str | os.PathLike) -> Path | None:
    """The file that names the classes of the list ``list_path``, found beside it, or ``None``.

    ``<prefix>_categories.txt`` when the list's name starts with ``<prefix>_`` (the longest such prefix), else
    ``categories.txt``, else the folder's only categories file, else UCF101's ``classInd.txt``.
    """
    list_path = Path(list_path)
    found = categories_files(list_path.parent)
    prefixes = sorted((k for k in found if k and list_path.name.startswith(k + "_")), key=len, reverse=True)
    if prefixes:
        return found[prefixes[0]]
    if "" in found:
        return found[""]
    if len(found) == 1:
        return next(iter(found.values()))
    index = list_path.parent / CLASS_INDEX_FILE
    return index if index.is_file() and index != list_path else None


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names of a categories file (FineGym format: ``"(EV) name"``) or a UCF101 ``classInd.txt``."""
    path = Path(path)
    if path.name == CLASS_INDEX_FILE:
        return read_class_index(path)
    return [c.full_name for c in finegym.read_categories(path)]


def is_class_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names classes or sets rather than clips (so it is not read as a list)."""
    name = Path(path).name
    return name == CLASS_INDEX_FILE or name.endswith("categories.txt")


def _read_path_label_list(path: Path, classes: Sequence[str] | None, class_file: Path | None) -> VideoList:
    rows = read_numbered_samples(path)
    if classes is None:
        return VideoList([s for _, s in rows], [str(i) for i in range(max(s.label for _, s in rows) + 1)])
    names = list(classes)
    for line, s in rows:
        if s.label >= len(names):
            where = f" of {class_file.name}" if class_file is not None else ""
            raise ListFormatError(path, f"label {s.label} is out of range for the {len(names)} classes{where}", line)
    return VideoList([s for _, s in rows], names)


def read_video_list(path: str | os.PathLike, classes: Sequence[str] | None = None) -> VideoList:
    """Read any supported list file, choosing the reader from its content.

    ``*.jsonl`` → :func:`read_jsonl_list`; a first line that is a CSV header naming ``path`` and ``label`` →
    :func:`read_csv_list`; otherwise the ``path label`` format of :func:`encoder.data.splits.read_samples`.
    Without ``classes``, the classes are those of the categories file beside the list (:func:`find_class_file`)
    when there is one, so a label outside it is an error naming its line; with no such file, integer labels
    index the classes ``["0", ..., str(max label)]`` and names are numbered in sorted order.
    """
    path = Path(path)
    class_file = find_class_file(path) if classes is None else None
    if class_file is not None:
        classes = read_class_names(class_file)
    if path.suffix.lower() == ".jsonl":
        return read_jsonl_list(path, classes)
    if _has_csv_header(path):
        return read_csv_list(path, classes)
    return _read_path_label_list(path, classes, class_file)
