"""Strict JSON: the one reader and writer of every JSON / JSONL file in the toolkit.

Plain ``json`` accepts ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON), turns ``1e999`` into ``inf``, reads
400-digit integers that later overflow any float arithmetic, and raises a bare ``ValueError`` for integers past
Python's int-string limit (4,300 digits). Here every such value is refused with a :class:`ListFormatError` (a
:class:`~common.errors.DataError`, so the ``sefar`` CLI prints it as one ``error: <file>[:<line>]: <problem>``
line) naming the file and the line.

Reading::

    read_json(path)                     # any JSON value of a whole file
    read_json_object(path, missing=...) # a file whose top level must be an object
    read_jsonl(path)                    # [(line number, object), ...] of a JSONL file
    loads(text, path, line=None)        # text already read (``path`` and ``line`` only name it in errors)

Writing (``NaN`` / infinities raise ``ValueError``: they are a bug upstream, never written)::

    dumps(value, indent=2)              # json.dumps with allow_nan=False
    write_json(path, value, indent=2)   # atomically, with a final newline unless ``newline=False``
    write_jsonl(path, records)          # one compact object per line, atomically
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from common.errors import ListFormatError
from common.textio import split_lines, write_text_atomic

__all__ = ["decode_text", "dumps", "loads", "parse_jsonl", "read_json", "read_json_object", "read_jsonl",
           "scan_value", "write_json", "write_jsonl"]

_FLOAT_MAX = sys.float_info.max
_MAX_INT_DIGITS = len(str(int(_FLOAT_MAX)))  # 309: more digits than this is always beyond float range


class _BadNumber(ValueError):
    """Raised by the decoder hooks; ``token`` is the offending JSON text (to find its line)."""

    def __init__(self, token: str, reason: str):
        super().__init__(reason)
        self.token, self.reason = token, reason


def _short(token: str) -> str:
    return token if len(token) <= 24 else f"{token[:12]}...{token[-6:]} ({len(token.lstrip('-'))} digits)"


def _constant(token: str) -> object:
    raise _BadNumber(token, f"{token} is not a JSON number (NaN and infinities are not allowed)")


def _float(token: str) -> float:
    value = float(token)
    if value == float("inf") or value == -float("inf"):
        raise _BadNumber(token, f"number {_short(token)} is out of range (beyond ±{_FLOAT_MAX:.4g})")
    return value


def _int(token: str) -> int:
    if len(token) < 300:  # always within float range (and far below the int-string limit)
        return int(token)
    digits = len(token.lstrip("-"))
    if digits <= _MAX_INT_DIGITS:
        value = int(token)
        if abs(value) <= int(_FLOAT_MAX):
            return value
    raise _BadNumber(token, f"integer {_short(token)} is out of range (beyond ±{_FLOAT_MAX:.4g})")


_DECODER = json.JSONDecoder(parse_float=_float, parse_int=_int, parse_constant=_constant)
_SCAN = _DECODER.scan_once  # the C scanner behind loads, without its per-call wrapping


def _line_of(text: str, token: str) -> int | None:
    """Line of the first ``token`` outside a string in ``text`` (the offending number of a hook error)."""
    pattern = re.compile(r'"(?:[^"\\]|\\.)*"|(?<![\w.+-])' + re.escape(token) + r"(?![\w.+-])", re.S)
    for match in pattern.finditer(text):
        if not match.group().startswith('"'):
            return text.count("\n", 0, match.start()) + 1
    return None


def decode_text(data: bytes, path: str | os.PathLike) -> str:
    """UTF-8 ``data`` (BOM dropped) as text; undecodable bytes raise :class:`ListFormatError` naming ``path``."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ListFormatError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None


def loads(text: str, path: str | os.PathLike, line: int | None = None) -> object:
    """Strictly parse the JSON ``text`` read from ``path`` (``line``: the line it came from, for JSONL).

    Syntax errors, ``NaN``/``Infinity``, numbers beyond float range (``1e999``, 400-digit integers) and
    too-deep nesting raise :class:`ListFormatError` with the file and line.
    """
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as err:
        where = line if line is not None else err.lineno
        column = f" (column {err.colno})" if line is not None else ""
        raise ListFormatError(path, f"invalid JSON: {err.msg}{column}", line=where) from None
    except _BadNumber as err:
        where = line if line is not None else _line_of(text, err.token)
        raise ListFormatError(path, f"invalid JSON: {err.reason}", line=where) from None
    except RecursionError:
        raise ListFormatError(path, "invalid JSON: nested too deeply", line=line) from None


def scan_value(text: str, path: str | os.PathLike, line: int) -> object:
    """The one JSON value that is all of ``text`` (a JSONL line), strictly; errors name the line."""
    text = text.strip(" \t\n\r")
    try:
        value, end = _SCAN(text, 0)
    except (StopIteration, json.JSONDecodeError, _BadNumber, RecursionError):
        return loads(text, path, line)  # raises with the precise message (the fast scanner says too little)
    if end != len(text):
        raise ListFormatError(path, f"invalid JSON: extra data after column {end}", line=line)
    return value


def read_json(path: str | os.PathLike) -> object:
    """The JSON value of a whole UTF-8 file, strictly (see :func:`loads`)."""
    return loads(decode_text(Path(path).read_bytes(), path), path)


def read_json_object(path: str | os.PathLike, missing: str = "missing") -> dict:
    """The JSON object in ``path``; a missing file (``missing`` says why it matters), invalid JSON or another
    top-level value is one :class:`ListFormatError` naming the file (and the line, where there is one)."""
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise ListFormatError(path, missing) from None
    if not isinstance(data, dict):
        raise ListFormatError(path, "expected a JSON object")
    return data


def parse_jsonl(text: str, path: str | os.PathLike) -> list[tuple[int, dict]]:
    """``[(line number, object), ...]`` of JSONL ``text`` read from ``path``; blank lines are skipped, every
    other line must be one JSON object."""
    rows = []
    for number, line in enumerate(split_lines(text), start=1):
        line = line.strip()
        if not line:
            continue
        record = scan_value(line, path, number)
        if type(record) is not dict:
            raise ListFormatError(path, "each line must be a JSON object", line=number)
        rows.append((number, record))
    return rows


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """:func:`parse_jsonl` of a UTF-8 file."""
    return parse_jsonl(decode_text(Path(path).read_bytes(), path), path)


def dumps(value: object, **kwargs) -> str:
    """``json.dumps`` that refuses ``NaN`` and infinities (``ValueError``) instead of writing non-JSON."""
    return json.dumps(value, allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike, value: object, indent: int | None = 2, *, newline: bool = True,
               ensure_ascii: bool = True) -> Path:
    """Write ``value`` as JSON atomically (temporary file + ``os.replace``); nothing is written if it holds a
    ``NaN`` or an infinity (``ValueError``)."""
    write_text_atomic(path, dumps(value, indent=indent, ensure_ascii=ensure_ascii) + ("\n" if newline else ""))
    return Path(path)


def write_jsonl(path: str | os.PathLike, records: Iterable[object], *, ensure_ascii: bool = False) -> Path:
    """Write one compact JSON value per line (UTF-8, LF) atomically; ``NaN``/infinities raise ``ValueError``."""
    encode = json.JSONEncoder(ensure_ascii=ensure_ascii, allow_nan=False).encode
    write_text_atomic(path, "".join(encode(record) + "\n" for record in records))
    return Path(path)
