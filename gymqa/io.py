"""Atomic writes and line-checked reads of JSON / JSONL files."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from common import jsonio
from common.errors import ListFormatError
from common.textio import write_text_atomic

__all__ = ["gc_paused", "parse_jsonl", "read_json", "read_jsonl", "read_text", "write_json", "write_jsonl",
           "write_text"]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (usable as a decorator).

    Bulk work here creates hundreds of thousands of small acyclic objects (JSON records, questions); the
    collector's passes over them cost about 40% of the time and free nothing (reference counting does).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    write_text_atomic(path, text)
    return Path(path)


@gc_paused()
def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write one compact JSON object per line (UTF-8, LF), atomically; NaN/infinities raise ``ValueError``."""
    return jsonio.write_jsonl(path, records)


def write_json(path: str | os.PathLike, data: object, indent: int = 2) -> Path:
    """Write ``data`` as indented JSON (no final newline), atomically; NaN/infinities raise ``ValueError``."""
    return jsonio.write_json(path, data, indent, newline=False, ensure_ascii=False)


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 file's text (BOM dropped); undecodable bytes raise :class:`ListFormatError`."""
    try:
        return Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ListFormatError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None


def read_json(path: str | os.PathLike) -> object:
    """Parse a whole JSON file strictly (:func:`common.jsonio.read_json`); problems are :class:`ListFormatError`
    with the line."""
    return jsonio.loads(read_text(path), path)


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """``[(line number, object), ...]`` of a JSONL file; blank lines are skipped, other lines must be objects."""
    return parse_jsonl(read_text(path), path)


@gc_paused()
def parse_jsonl(text: str, path: str | os.PathLike) -> list[tuple[int, dict]]:
    """:func:`read_jsonl` on text already read from ``path`` (named in errors); strict, see :mod:`common.jsonio`."""
    return jsonio.parse_jsonl(text, path)
