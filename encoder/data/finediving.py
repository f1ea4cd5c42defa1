"""FineDiving (Xu et al., CVPR 2022) annotations and frame folders, read without trusting the pickles.

Files of the release (``Annotations/``):

- ``FineDiving_coarse_annotation.pkl``: a dict ``{(video_name: str, index: int): {"action_type": str,
  "start_frame": int, "end_frame": int, "dive_score": float, "difficulty": float, ...}}``; ``action_type`` is the
  dive number such as ``"5253B"`` (52 types). Extra fields (judge scores, numpy arrays) are ignored.
- ``train_split.pkl`` / ``test_split.pkl``: lists of ``(video_name, index)`` keys.
- trimmed frames: ``<frames root>/<video_name>/<index>/<frame>.jpg`` (e.g. ``FINADiving_MTL_256s/``), one jpg per
  frame of the untrimmed video, named by its 5-digit frame number, ``start_frame..end_frame`` inclusive.

As in the SeFAR paper the class of a dive is its ``action_type``, lower-cased (``"5253b"``); classes are numbered
in sorted order over the whole annotation so train and test share one mapping.

The pickles are opened with :func:`load_pickle`, which only admits plain containers and numpy arrays: a pickle
that names any other callable (``os.system``, ``builtins.eval`` ...) is refused before anything runs.
"""

from __future__ import annotations

import builtins
import codecs
import importlib
import io
import numbers
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from common.errors import DataError
from common.textio import is_plain_int
from encoder.data.lists import VideoList
from encoder.data.splits import Sample

FRAME_DIGITS = 5
FRAME_SUFFIX = ".jpg"

DiveKey = tuple[str, int]

_BUILTIN_TYPES = ("dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float",
                  "complex", "bool")


def _numpy_submodule(name: str) -> ModuleType:
    """``numpy._core.<name>`` (numpy >= 2) or ``numpy.core.<name>`` (numpy 1.x)."""
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{name}")


def _allowed_globals() -> dict[tuple[str, str], Callable[[], object]]:
    """The only ``module.name`` globals a FineDiving pickle may reference, each with a resolver."""
    allowed: dict[tuple[str, str], Callable[[], object]] = {}
    for module in ("builtins", "__builtin__"):  # Python 3 / Python 2 pickles
        for name in _BUILTIN_TYPES:
            allowed[(module, name)] = lambda name=name: getattr(builtins, name)
        for name in ("bytes", "bytearray"):
            allowed[(module, name)] = lambda name=name: _sized_buffer(getattr(builtins, name))
    allowed[("_codecs", "encode")] = lambda: codecs.encode  # how protocol <= 2 stores bytes
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = lambda: _numpy_submodule("multiarray")._reconstruct
        allowed[(f"{prefix}.multiarray", "scalar")] = lambda: _numpy_submodule("multiarray").scalar
        allowed[(f"{prefix}.numeric", "_frombuffer")] = lambda: _numpy_submodule("numeric")._frombuffer
    allowed[("numpy", "ndarray")] = lambda: np.ndarray
    allowed[("numpy", "dtype")] = lambda: np.dtype
    return allowed


def _sized_buffer(kind: type) -> Callable[..., object]:
    """``bytes``/``bytearray`` as a pickle may call them, except from a bare size (``bytearray(10**11)``): real
    pickles pass the content, a size is only a way to make the loader allocate without bound."""

    def build(*args: object) -> object:
        if args and isinstance(args[0], numbers.Integral):
            raise pickle.UnpicklingError(f"{kind.__name__}({args[0]}) allocates a buffer from a size")
        return kind(*args)

    return build


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list (``.name`` is ``"module.name"``)."""

    def __init__(self, name: str):
        super().__init__(f"refused to load {name}")
        self.name = name


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` admits only :func:`_allowed_globals`."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        resolver = self._allowed.get((module, name))
        if resolver is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return resolver()


def load_pickle(path: str | os.PathLike) -> object:
    """Unpickle ``path`` admitting only builtin containers/scalars and numpy arrays, dtypes and scalars.

    Raises:
        DataError: the pickle names any other global (nothing from it is executed), or it is not a valid pickle.
    """
    path = Path(path)
    # Unpickle from memory: a length field that claims 10**11 bytes then only reads what the file holds,
    # where a file object would first allocate the claimed size.
    stream = io.BytesIO(path.read_bytes())
    try:
        return _RestrictedUnpickler(stream, encoding="latin1").load()
    except _RefusedGlobal as err:
        raise DataError(path, f"unsafe pickle: it references {err.name}, which is not a plain container "
                              "or numpy array; refusing to load it") from None
    except pickle.UnpicklingError as err:
        raise DataError(path, f"not a valid pickle: {err}") from None
    except MemoryError:
        raise DataError(path, "not a valid pickle: it asks for more memory than is available") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError) as err:
        raise DataError(path, f"not a valid pickle: {type(err).__name__}: {err}") from None


@dataclass(frozen=True)
class DiveAnnotation:
    """One dive of the coarse annotation; frames are numbers in the untrimmed video, ``end_frame`` included."""

    video: str
    index: int
    action_type: str
    start_frame: int
    end_frame: int
    dive_score: float | None = None
    difficulty: float | None = None

    @property
    def key(self) -> DiveKey:
        return (self.video, self.index)

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame + 1


def _as_int(value: object) -> int | None:
    """An integral number (python or numpy, int or whole float, digit string) as ``int``; else ``None``."""
    if isinstance(value, str) and is_plain_int(value.strip()):
        return int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    return None


def _as_key(value: object, path: Path, where: str) -> DiveKey:
    if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], str):
        index = _as_int(value[1])
        if index is not None and index >= 0:
            return (value[0], index)
    raise DataError(path, f"{where}: expected a (video_name, index) key, got {value!r}")


def _optional_float(value: object) -> float | None:
    return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else None


def _dive(path: Path, key: DiveKey, value: object) -> DiveAnnotation:
    if not isinstance(value, dict):
        raise DataError(path, f"entry {key!r}: expected a dict of fields, got {type(value).__name__}")
    missing = [f for f in ("action_type", "start_frame", "end_frame") if f not in value]
    if missing:
        raise DataError(path, f"entry {key!r}: missing field(s) {', '.join(missing)}")
    action = value["action_type"]
    if not isinstance(action, (str, numbers.Integral)) or not str(action).strip():
        raise DataError(path, f"entry {key!r}: action_type must be a dive number like '5253B', got {action!r}")
    start, end = _as_int(value["start_frame"]), _as_int(value["end_frame"])
    if start is None or end is None or start < 0 or end < start:
        raise DataError(path, f"entry {key!r}: bad frames {value['start_frame']!r}..{value['end_frame']!r}")
    return DiveAnnotation(key[0], key[1], str(action).strip().lower(), start, end,
                          _optional_float(value.get("dive_score")), _optional_float(value.get("difficulty")))


def read_coarse_annotations(path: str | os.PathLike) -> dict[DiveKey, DiveAnnotation]:
    """Read ``FineDiving_coarse_annotation.pkl`` into ``{(video, index): DiveAnnotation}`` (file order)."""
    path = Path(path)
    data = load_pickle(path)
    if not isinstance(data, dict) or not data:
        raise DataError(path, "expected a non-empty dict {(video_name, index): {...}}")
    out: dict[DiveKey, DiveAnnotation] = {}
    for raw_key, value in data.items():
        key = _as_key(raw_key, path, "annotation key")
        out[key] = _dive(path, key, value)
    return out


def read_split_keys(path: str | os.PathLike) -> list[DiveKey]:
    """Read ``train_split.pkl`` / ``test_split.pkl``: a list of ``(video_name, index)`` keys, unique."""
    path = Path(path)
    data = load_pickle(path)
    if not isinstance(data, (list, tuple)) or not data:
        raise DataError(path, "expected a non-empty list of (video_name, index) keys")
    keys = [_as_key(item, path, f"item {i}") for i, item in enumerate(data)]
    if len(set(keys)) != len(keys):
        dup = next(k for i, k in enumerate(keys) if k in keys[:i])
        raise DataError(path, f"key {dup!r} is listed twice")
    return keys


def action_classes(annotations: dict[DiveKey, DiveAnnotation]) -> list[str]:
    """The lower-cased action types, sorted: ``classes[label]``."""
    return sorted({a.action_type for a in annotations.values()})


def frame_folder(root: str | os.PathLike, key: DiveKey) -> Path:
    """``<root>/<video_name>/<index>``: where the frames of one dive are."""
    return Path(root) / key[0] / str(key[1])


@dataclass(frozen=True)
class FrameClip:
    """A dive's frame folder and its frame numbers ``first..last`` (inclusive)."""

    folder: Path
    first: int
    last: int

    @property
    def num_frames(self) -> int:
        return self.last - self.first + 1

    def frame_paths(self) -> list[Path]:
        """The expected jpg of every frame: ``<folder>/<5-digit frame number>.jpg``."""
        return [self.folder / f"{i:0{FRAME_DIGITS}d}{FRAME_SUFFIX}" for i in range(self.first, self.last + 1)]


def frame_clip(root: str | os.PathLike, annotation: DiveAnnotation) -> FrameClip:
    """The frame folder and frame range of one dive (existence is not checked)."""
    return FrameClip(frame_folder(root, annotation.key), annotation.start_frame, annotation.end_frame)


def read_finediving(
    annotation_path: str | os.PathLike,
    split_path: str | os.PathLike,
    frames_root: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
) -> VideoList:
    """Samples of one split: path = the dive's frame folder (``<video>/<index>``, joined to ``frames_root``
    when given), label = index of its action type in ``classes`` (default :func:`action_classes`)."""
    annotations = read_coarse_annotations(annotation_path)
    classes = list(classes) if classes is not None else action_classes(annotations)
    position = {name: i for i, name in enumerate(classes)}
    samples = []
    for key in read_split_keys(split_path):
        if key not in annotations:
            raise DataError(split_path, f"key {key!r} has no entry in {Path(annotation_path).name}")
        action = annotations[key].action_type
        if action not in position:
            raise DataError(annotation_path, f"entry {key!r}: action type {action!r} is not among the classes")
        folder = frame_folder(frames_root, key) if frames_root is not None else Path(key[0], str(key[1]))
        samples.append(Sample(folder.as_posix() if frames_root is None else os.fspath(folder), position[action]))
    return VideoList(samples, classes)
