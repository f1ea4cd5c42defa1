"""Atomic writes and line-checked reads of JSON / JSONL files."""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from common.errors import ListFormatError
from common.textio import split_lines, write_text_atomic

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
    """Write one compact JSON object per line (UTF-8, LF), atomically."""
    encode = json.JSONEncoder(ensure_ascii=False).encode
    lines = [encode(record) + "\n" for record in records]
    return write_text(path, "".join(lines))


def write_json(path: str | os.PathLike, data: object, indent: int = 2) -> Path:
    """Write ``data`` as indented JSON (no trailing newline added beyond ``json.dumps``), atomically."""
    return write_text(path, json.dumps(data, indent=indent, ensure_ascii=False))


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 file's text (BOM dropped); undecodable bytes raise :class:`ListFormatError`."""
    try:
        return Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ListFormatError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None


def read_json(path: str | os.PathLike) -> object:
    """Parse a whole JSON file; syntax errors become :class:`ListFormatError` with the line."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise ListFormatError(path, f"invalid JSON: {err.msg}", line=err.lineno) from None
    except RecursionError:
        raise ListFormatError(path, "invalid JSON: nested too deeply") from None


_SCAN = json.JSONDecoder().scan_once  # the C scanner behind json.loads, without its per-call wrapping


def _json_error(line: str) -> str:
    try:
        json.loads(line)
    except json.JSONDecodeError as err:
        return f"invalid JSON: {err.msg} (column {err.colno})"
    except RecursionError:
        return "invalid JSON: nested too deeply"
    return "invalid JSON"


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """``[(line number, object), ...]`` of a JSONL file; blank lines are skipped, other lines must be objects."""
    return parse_jsonl(read_text(path), path)


@gc_paused()
def parse_jsonl(text: str, path: str | os.PathLike) -> list[tuple[int, dict]]:
    """:func:`read_jsonl` on text already read from ``path`` (named in errors)."""
    rows = []
    for number, line in enumerate(split_lines(text), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            record, end = _SCAN(line, 0)
        except (StopIteration, json.JSONDecodeError, RecursionError):
            raise ListFormatError(path, _json_error(line), line=number) from None
        if end != len(line):
            raise ListFormatError(path, f"invalid JSON: extra data after column {end}", line=number)
        if type(record) is not dict:
            raise ListFormatError(path, "each line must be a JSON object", line=number)
        rows.append((number, record))
    return rows
