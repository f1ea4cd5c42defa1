"""Parsers for the FineGym release files (Shao et al., CVPR 2020) and the event -> set -> element hierarchy.

Formats (one record per line, ``\\n`` or ``\\r\\n``, blank lines skipped):

* ``gym99_categories.txt`` / ``gym288_categories.txt``:
  ``Clabel:   0; set:  1; Glabel:   1; (VT) round-off, flic-flac ...``
* ``gym530_categories.txt``: ``Glabel:   0; set:  1; (VT) round-off, ...`` (the Glabel is the label)
* ``set_categories.txt``: ``set: 21; FX_leap_jump_hop``
* element lists (``gym99_train_element_v1.1.txt`` ...): ``<clip id> <label>``
* ``finegym_glabel_to_Qtree.json``: ``{"<glabel>": {"BTcode": "0101", "questions": [...], "code": "6.101"}}``
* ``finegym_annotation_info_v1.1.json``: ``{youtube_id: {"E_XXXXXX_YYYYYY": {"event": int,
  "timestamps": [[abs_start, abs_end]], "segments": {"A_ZZZZ_WWWW": {"stages": int,
  "timestamps": [[rel_start, rel_end], ...]}} | null}}}``

Clip id: ``{youtube_id}_E_{XXXXXX}_{YYYYYY}_A_{ZZZZ}_{WWWW}``: the event spans seconds XXXXXX..YYYYYY of the
YouTube video, the element seconds ZZZZ..WWWW relative to the event start (whole seconds).

Every malformed line raises :class:`~common.errors.ListFormatError` naming the file and line.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from common.errors import ListFormatError
from common.jsonio import read_json
from common.textio import is_plain_int, split_lines

__all__ = [
    "EVENT_CODES",
    "Category",
    "ClipId",
    "ElementAnnotation",
    "Hierarchy",
    "QTreeEntry",
    "Subset",
    "event_of_set",
    "parse_clip_id",
    "read_annotations",
    "read_categories",
    "read_element_list",
    "read_qtree",
    "read_set_categories",
]

EVENT_CODES: dict[int, str] = {1: "VT", 2: "FX", 3: "BB", 4: "UB"}
_EVENT_ORDER = {name: code for code, name in EVENT_CODES.items()}

_CLABEL_RE = re.compile(r"Clabel:\s*(\d+);\s*set:\s*(\d+);\s*Glabel:\s*(\d+);\s*\((\w+)\)\s*(.*)")
_GLABEL_RE = re.compile(r"Glabel:\s*(\d+);\s*set:\s*(\d+);\s*\((\w+)\)\s*(.*)")
_SET_RE = re.compile(r"set:\s*(\d+);\s*(\S.*)")
_CLIP_RE = re.compile(r"(?P<yt>[A-Za-z0-9_-]+)_E_(?P<es>\d{6})_(?P<ee>\d{6})_A_(?P<as>\d{4})_(?P<ae>\d{4})")
_EVENT_KEY_RE = re.compile(r"E_(\d{6})_(\d{6})")
_ELEMENT_KEY_RE = re.compile(r"A_(\d{4})_(\d{4})")


def event_of_set(set_id: int) -> str:
    """Event code of a FineGym set id: ``1 -> "VT"``, ``21..25 -> "FX"``, ``31..35 -> "BB"``, ``41..44 -> "UB"``.

    A set id is either an event code (1..4, an event with a single set such as vault) or
    ``10 * event + k`` with ``k`` in 1..9. Anything else raises ``ValueError``.
    """
    if set_id in EVENT_CODES:
        return EVENT_CODES[set_id]
    if 11 <= set_id <= 49 and set_id % 10 != 0:
        return EVENT_CODES[set_id // 10]
    raise ValueError(f"set id {set_id} is not a FineGym set (expected 1..4 or 10*event+k with event 1..4, k 1..9)")


@dataclass(frozen=True)
class Category:
    """One element class of a categories file.

    ``label`` is the Clabel of gym99/gym288 files and equals ``glabel`` for gym530. ``name`` has the event tag
    and surrounding whitespace removed (the release pads a few names with trailing spaces).
    """

    label: int
    glabel: int
    set_id: int
    event: str
    name: str

    @property
    def full_name(self) -> str:
        """The name with its event tag, ``"(VT) round-off, ..."``, as written in the categories file."""
        return f"({self.event}) {self.name}"


def _lines(path: str | os.PathLike) -> list[tuple[int, str]]:
    """Non-blank lines of a text file as ``(1-based line number, text without line ending)``."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ListFormatError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    rows = []
    for number, line in enumerate(split_lines(text), start=1):
        line = line.strip()
        if line:
            rows.append((number, line))
    return rows


def _category_from_line(path: str | os.PathLike, number: int, line: str) -> tuple[str, Category]:
    """Parse one categories line; returns ``("clabel" | "glabel", category)`` so mixed files can be rejected."""
    match = _CLABEL_RE.fullmatch(line)
    if match:
        label, set_id, glabel, event, name = match.groups()
        kind = "clabel"
    else:
        match = _GLABEL_RE.fullmatch(line)
        if not match:
            expected = "'Clabel: N; set: S; Glabel: G; (EV) name' or 'Glabel: G; set: S; (EV) name'"
            raise ListFormatError(path, f"expected {expected}, got {line!r}", line=number)
        glabel, set_id, event, name = match.groups()
        label, kind = glabel, "glabel"
    try:
        expected = event_of_set(int(set_id))
    except ValueError as err:
        raise ListFormatError(path, str(err), line=number) from None
    if event != expected:
        reason = f"event tag ({event}) does not match set {set_id}, which belongs to {expected}"
        raise ListFormatError(path, reason, line=number)
    if not name.strip():
        raise ListFormatError(path, "empty element name", line=number)
    return kind, Category(int(label), int(glabel), int(set_id), event, name.strip())


def read_categories(path: str | os.PathLike) -> list[Category]:
    """Read a gym99/gym288 (Clabel) or gym530 (Glabel) categories file, sorted by label.

    Labels must be exactly ``0..N-1`` (each once) and Glabels unique.
    """
    kinds: set[str] = set()
    by_label: dict[int, tuple[int, Category]] = {}
    glabels: dict[int, int] = {}
    for number, line in _lines(path):
        kind, category = _category_from_line(path, number, line)
        kinds.add(kind)
        if len(kinds) > 1:
            raise ListFormatError(path, "mixes Clabel lines and Glabel-only lines", line=number)
        if category.label in by_label:
            reason = f"label {category.label} repeats line {by_label[category.label][0]}"
            raise ListFormatError(path, reason, line=number)
        if category.glabel in glabels:
            reason = f"Glabel {category.glabel} repeats line {glabels[category.glabel]}"
            raise ListFormatError(path, reason, line=number)
        by_label[category.label] = (number, category)
        glabels[category.glabel] = number
    if not by_label:
        raise ListFormatError(path, "no categories")
    missing = sorted(set(range(len(by_label))) - set(by_label))
    if missing:
        raise ListFormatError(path, f"labels must be 0..{len(by_label) - 1}; missing {missing[:5]}")
    return [by_label[label][1] for label in range(len(by_label))]


def read_set_categories(path: str | os.PathLike) -> dict[int, str]:
    """Read ``set: 21; FX_leap_jump_hop`` lines into ``{21: "FX_leap_jump_hop"}`` (file order kept)."""
    sets: dict[int, str] = {}
    for number, line in _lines(path):
        match = _SET_RE.fullmatch(line)
        if not match:
            raise ListFormatError(path, f"expected 'set: S; name', got {line!r}", line=number)
        set_id = int(match.group(1))
        try:
            event_of_set(set_id)
        except ValueError as err:
            raise ListFormatError(path, str(err), line=number) from None
        if set_id in sets:
            raise ListFormatError(path, f"set {set_id} is listed twice", line=number)
        sets[set_id] = match.group(2).strip()
    if not sets:
        raise ListFormatError(path, "no sets")
    return sets


def read_element_list(
    path: str | os.PathLike, num_classes: int | None = None, categories_name: str = "the categories file"
) -> list[tuple[str, int]]:
    """Read ``<clip id> <label>`` lines into ``[(clip_id, label), ...]`` in file order.

    Clip ids must follow the FineGym pattern and be unique; labels are non-negative integers, below
    ``num_classes`` when given (``categories_name`` names where that count comes from in the error).
    """
    items: list[tuple[str, int]] = []
    seen: dict[str, int] = {}
    for number, line in _lines(path):
        fields = line.split()
        if len(fields) != 2 or not is_plain_int(fields[1]):
            raise ListFormatError(path, f"expected '<clip id> <label>', got {line!r}", line=number)
        clip_id = fields[0]
        if num_classes is not None and int(fields[1]) >= num_classes:
            reason = f"label {_short(fields[1])} is out of range for the {num_classes} classes of {categories_name}"
            raise ListFormatError(path, reason, line=number)
        try:
            parse_clip_id(clip_id)
        except ValueError as err:
            raise ListFormatError(path, str(err), line=number) from None
        if clip_id in seen:
            raise ListFormatError(path, f"clip {clip_id} repeats line {seen[clip_id]}", line=number)
        seen[clip_id] = number
        items.append((clip_id, int(fields[1])))
    return items


def _short(token: str, width: int = 24) -> str:
    """``token`` cut to ``width`` characters for an error message."""
    return token if len(token) <= width else token[: width - 3] + "..."


@dataclass(frozen=True)
class ClipId:
    """A parsed FineGym clip id; ``str()`` gives the id back."""

    youtube_id: str
    event_start: int
    event_end: int
    element_start: int
    element_end: int

    @property
    def event_key(self) -> str:
        """``"E_XXXXXX_YYYYYY"``: the event's key in the annotation JSON."""
        return f"E_{self.event_start:06d}_{self.event_end:06d}"

    @property
    def element_key(self) -> str:
        """``"A_ZZZZ_WWWW"``: the element's key inside its event's ``segments``."""
        return f"A_{self.element_start:04d}_{self.element_end:04d}"

    def __str__(self) -> str:
        return f"{self.youtube_id}_{self.event_key}_{self.element_key}"


def parse_clip_id(clip_id: str) -> ClipId:
    """Parse ``{youtube_id}_E_{XXXXXX}_{YYYYYY}_A_{ZZZZ}_{WWWW}``; raises ``ValueError`` when malformed.

    YouTube ids may themselves contain ``_`` and ``-``. Starts must not exceed ends.
    """
    match = _CLIP_RE.fullmatch(clip_id)
    if not match:
        raise ValueError(f"clip id {clip_id!r} does not match '<youtube id>_E_XXXXXX_YYYYYY_A_ZZZZ_WWWW'")
    clip = ClipId(match["yt"], int(match["es"]), int(match["ee"]), int(match["as"]), int(match["ae"]))
    if clip.event_start > clip.event_end or clip.element_start > clip.element_end:
        raise ValueError(f"clip id {clip_id!r} has a start after its end")
    return clip


@dataclass(frozen=True)
class QTreeEntry:
    """The official yes/no question path of one element (Glabel).

    ``bt_code[i]`` (``"1"`` yes / ``"0"`` no) answers ``questions[i]``; ``code`` is the entry's ``"code"`` string
    split at dots, e.g. ``"6.101" -> ("6", "101")`` (digits kept as written, so ``".".join(code)`` restores it).
    """

    glabel: int
    bt_code: str
    questions: tuple[str, ...]
    code: tuple[str, ...]

    @cached_property
    def answers(self) -> tuple[bool, ...]:
        """The yes/no answer of each question, from ``bt_code``."""
        return tuple(bit == "1" for bit in self.bt_code)


def _load_json(path: str | os.PathLike) -> object:
    return read_json(path)


def _qtree_entry(path: str | os.PathLike, key: str, value: object) -> QTreeEntry:
    if not is_plain_int(key):
        raise ListFormatError(path, f"key {key!r} is not a Glabel number")
    if not isinstance(value, dict) or {"BTcode", "questions", "code"} - set(value):
        raise ListFormatError(path, f"entry {key!r} needs 'BTcode', 'questions' and 'code'")
    bt_code, questions, code = value["BTcode"], value["questions"], value["code"]
    if not isinstance(bt_code, str) or set(bt_code) - {"0", "1"}:
        raise ListFormatError(path, f"entry {key!r}: BTcode must be a string of 0/1, got {bt_code!r}")
    if not isinstance(questions, list) or not all(isinstance(q, str) and q.strip() for q in questions):
        raise ListFormatError(path, f"entry {key!r}: questions must be a list of non-empty strings")
    if len(questions) != len(bt_code):
        raise ListFormatError(path, f"entry {key!r}: BTcode has {len(bt_code)} digits for {len(questions)} questions")
    if not isinstance(code, str) or not re.fullmatch(r"\d+(\.\d+)*", code):
        raise ListFormatError(path, f"entry {key!r}: code must look like '6.101', got {code!r}")
    return QTreeEntry(int(key), bt_code, tuple(q.strip() for q in questions), tuple(code.split(".")))


def read_qtree(path: str | os.PathLike) -> dict[int, QTreeEntry]:
    """Read ``finegym_glabel_to_Qtree.json`` into ``{glabel: QTreeEntry}``."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise ListFormatError(path, "expected a JSON object keyed by Glabel")
    entries = [_qtree_entry(path, key, value) for key, value in data.items()]
    return {entry.glabel: entry for entry in entries}


@dataclass(frozen=True)
class ElementAnnotation:
    """One element of the nested annotation JSON.

    ``event_start``/``event_end`` are absolute seconds of the event in the YouTube video; ``segments`` are
    ``(start, end)`` pairs in seconds relative to the event start (one per stage: vault has 3, others 1).
    """

    clip_id: str
    youtube_id: str
    event: str
    event_start: float
    event_end: float
    stages: int
    segments: tuple[tuple[float, float], ...]

    @property
    def start(self) -> float:
        """Start of the first segment, seconds relative to the event start."""
        return self.segments[0][0]

    @property
    def end(self) -> float:
        """End of the last segment, seconds relative to the event start."""
        return self.segments[-1][1]


# Element times are relative to the event start and must lie within the event's length; this much slack (seconds)
# allows for the rounding of the two independently annotated times.
SPAN_SLACK_S = 1.0


def _pairs(value: object) -> tuple[tuple[tuple[float, float], ...] | None, str]:
    """``[[a, b], ...]`` of numbers as a tuple of float pairs and ``""``, or ``None`` and what is wrong.

    Times are seconds: finite, ``0 <= a <= b``, pairs in chronological order (the strict JSON reader has already
    refused NaN, infinities and numbers beyond float range).
    """
    if not isinstance(value, list) or not value:
        return None, "no [start, end] pairs"
    pairs = []
    for i, pair in enumerate(value, start=1):
        numbers = isinstance(pair, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in pair)
        if not numbers or len(pair) != 2:
            return None, f"pair {i} is not [start, end] of two numbers"
        a, b = float(pair[0]), float(pair[1])
        if not (math.isfinite(a) and math.isfinite(b)):
            return None, f"pair {i} is not finite"
        if a < 0 or b < 0:
            return None, f"pair {i} [{pair[0]}, {pair[1]}] has a negative time"
        if a > b:
            return None, f"pair {i} [{pair[0]}, {pair[1]}] has its start after its end"
        if pairs and a < pairs[-1][0]:
            return None, f"pair {i} starts before pair {i - 1}"
        pairs.append((a, b))
    return tuple(pairs), ""


def _event_elements(path: str | os.PathLike, youtube_id: str, event_key: str, event: object) -> list[ElementAnnotation]:
    where = f"{youtube_id}/{event_key}"
    if not _EVENT_KEY_RE.fullmatch(event_key):
        raise ListFormatError(path, f"{where}: event key must look like 'E_XXXXXX_YYYYYY'")
    if not isinstance(event, dict) or type(event.get("event")) is not int or event["event"] not in EVENT_CODES:
        raise ListFormatError(path, f"{where}: 'event' must be one of {sorted(EVENT_CODES)}")
    span, problem = _pairs(event.get("timestamps"))
    if span is None or len(span) != 1:
        detail = f" ({problem})" if problem else ""
        raise ListFormatError(path, f"{where}: 'timestamps' must be [[abs_start, abs_end]]{detail}")
    (event_start, event_end), = span
    length = event_end - event_start
    segments = event.get("segments")
    if segments is None:
        return []
    if not isinstance(segments, dict):
        raise ListFormatError(path, f"{where}: 'segments' must be an object or null")
    elements = []
    for element_key, element in segments.items():
        if not _ELEMENT_KEY_RE.fullmatch(element_key):
            raise ListFormatError(path, f"{where}/{element_key}: element key must look like 'A_ZZZZ_WWWW'")
        times, problem = _pairs(element.get("timestamps")) if isinstance(element, dict) else (None, "")
        stages = element.get("stages") if isinstance(element, dict) else None
        if times is None or not isinstance(stages, int) or isinstance(stages, bool) or stages < 1:
            reason = "needs 'stages' (int >= 1) and 'timestamps' [[start, end], ...]"
            raise ListFormatError(path, f"{where}/{element_key}: {reason}{': ' + problem if problem else ''}")
        if len(times) != stages:
            reason = f"'stages' is {stages} but 'timestamps' has {len(times)} [start, end] pair(s) (one per stage)"
            raise ListFormatError(path, f"{where}/{element_key}: {reason}")
        if times[-1][1] > length + SPAN_SLACK_S:
            reason = (f"element time {times[0][0]:g}..{times[-1][1]:g} s (relative to the event start) lies outside "
                      f"its event, which is {length:g} s long")
            raise ListFormatError(path, f"{where}/{element_key}: {reason}")
        clip_id = f"{youtube_id}_{event_key}_{element_key}"
        event_name = EVENT_CODES[event["event"]]
        elements.append(ElementAnnotation(clip_id, youtube_id, event_name, event_start, event_end, stages, times))
    return elements


def read_annotations(path: str | os.PathLike) -> list[ElementAnnotation]:
    """Read ``finegym_annotation_info_v1.1.json`` into one :class:`ElementAnnotation` per element, in file order.

    Events whose ``"segments"`` is null have no element annotation and contribute nothing.
    """
    data = _load_json(path)
    if not isinstance(data, dict):
        raise ListFormatError(path, "expected a JSON object keyed by YouTube id")
    elements: list[ElementAnnotation] = []
    for youtube_id, events in data.items():
        if not isinstance(events, dict):
            raise ListFormatError(path, f"{youtube_id}: expected an object keyed by 'E_XXXXXX_YYYYYY'")
        for event_key, event in events.items():
            elements.extend(_event_elements(path, youtube_id, event_key, event))
    return elements


@dataclass
class Subset:
    """Categories of one event or set, with a map from their original labels to contiguous ``0..n-1``.

    ``categories`` keep their original labels; ``label_map[old] = new`` follows the original label order.
    """

    categories: list[Category]
    label_map: dict[int, int] = field(default_factory=dict)

    def filter(self, items: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Keep the ``(clip_id, label)`` pairs whose label is in the subset, relabelled to ``0..n-1``."""
        return [(clip_id, self.label_map[label]) for clip_id, label in items if label in self.label_map]


class Hierarchy:
    """The event -> set -> element tree of a categories list (plus optional set names)."""

    def __init__(self, categories: list[Category], set_names: dict[int, str] | None = None):
        self.categories = sorted(categories, key=lambda c: c.label)
        self.set_names = dict(set_names or {})

    @property
    def events(self) -> list[str]:
        """Events present, in FineGym order (VT, FX, BB, UB)."""
        return sorted({c.event for c in self.categories}, key=_EVENT_ORDER.__getitem__)

    def sets(self, event: str | None = None) -> list[int]:
        """Set ids present (of ``event`` when given), ascending."""
        self._check(event, None)
        return sorted({c.set_id for c in self.categories if event is None or c.event == event})

    def elements(self, event: str | None = None, set_id: int | None = None) -> list[Category]:
        """Categories of ``event`` and/or ``set_id`` (all when both are ``None``), by label."""
        self._check(event, set_id)
        return [
            c for c in self.categories if (event is None or c.event == event) and (set_id is None or c.set_id == set_id)
        ]

    def subset(self, event: str | None = None, set_id: int | None = None) -> Subset:
        """The categories of an event (``"UB"``) or a set (``41``) with a contiguous relabelling."""
        categories = self.elements(event, set_id)
        return Subset(categories, {c.label: new for new, c in enumerate(categories)})

    def level_labels(self, level: str) -> tuple[dict[int, int], list[str]]:
        """Relabel element classes at a coarser FineGym level: ``"element"`` (unchanged), ``"set"`` or ``"event"``.

        Returns ``label_map[element label] = new label`` and the names of the new labels. Sets are numbered by
        ascending set id and named from the set categories when known (else ``"set <id>"``); events follow
        FineGym's order (VT, FX, BB, UB). Use it for set- or event-level recognition on element lists:
        ``[(clip, label_map[y]) for clip, y in read_element_list(path)]``.
        """
        if level == "element":
            return {c.label: i for i, c in enumerate(self.categories)}, [c.full_name for c in self.categories]
        if level == "set":
            sets = self.sets()
            index = {set_id: i for i, set_id in enumerate(sets)}
            names = [self.set_names.get(set_id, f"set {set_id}") for set_id in sets]
            return {c.label: index[c.set_id] for c in self.categories}, names
        if level == "event":
            index = {event: i for i, event in enumerate(self.events)}
            return {c.label: index[c.event] for c in self.categories}, list(self.events)
        raise ValueError(f"unknown level {level!r}; choose element, set or event")

    def _check(self, event: str | None, set_id: int | None) -> None:
        if event is not None and event not in self.events:
            raise ValueError(f"unknown event {event!r}; choose from {self.events}")
        if set_id is not None and set_id not in {c.set_id for c in self.categories}:
            raise ValueError(f"unknown set {set_id}; choose from {self.sets()}")
        if event is not None and set_id is not None and event_of_set(set_id) != event:
            raise ValueError(f"set {set_id} belongs to {event_of_set(set_id)}, not {event}")


def default_paths(root: str | os.PathLike) -> dict[str, Path]:
    """The standard file names of a FineGym release folder (existence is not checked)."""
    root = Path(root)
    return {
        "gym99_categories": root / "gym99_categories.txt",
        "gym288_categories": root / "gym288_categories.txt",
        "gym530_categories": root / "gym530_categories.txt",
        "set_categories": root / "set_categories.txt",
        "gym99_train": root / "gym99_train_element_v1.1.txt",
        "gym99_val": root / "gym99_val_element.txt",
        "gym288_train": root / "gym288_train_element_v1.1.txt",
        "gym288_val": root / "gym288_val_element.txt",
        "qtree": root / "finegym_glabel_to_Qtree.json",
        "annotations": root / "finegym_annotation_info_v1.1.json",
    }


def write_level_lists(
    root: str | os.PathLike,
    out: str | os.PathLike,
    level: str,
    lists: tuple[str, ...] = ("train_element.txt", "val_element.txt"),
) -> list[str]:
    """Copy the element ``lists`` of a FineGym-style folder ``root`` into ``out`` relabelled at ``level``
    (``"set"`` or ``"event"``, see :meth:`Hierarchy.level_labels`); returns the names of the new labels.

    Needs ``categories.txt`` (and optionally ``set_categories.txt``) in ``root``; the files are written atomically.
    Train on them with ``data.root=OUT data.videos=ROOT/videos data.categories=null``.
    """
    from common.textio import write_text_atomic

    root, out = Path(root), Path(out)
    set_names = read_set_categories(root / "set_categories.txt") if (root / "set_categories.txt").is_file() else {}
    mapping, names = Hierarchy(read_categories(root / "categories.txt"), set_names).level_labels(level)
    for name in lists:
        items = read_element_list(root / name)
        unknown = sorted({label for _, label in items} - set(mapping))
        if unknown:
            raise ListFormatError(root / name, f"labels {unknown[:5]} are not in {root / 'categories.txt'}")
        write_text_atomic(out / name, "".join(f"{clip} {mapping[label]}\n" for clip, label in items))
    return names
