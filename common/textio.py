"""Text files written atomically and read line by line, the same way in every stage."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from common.errors import DataError


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, LF) to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_plain_int(token: str) -> bool:
    """Whether ``token`` is a non-negative integer written in ASCII digits (``str.isdigit`` alone also accepts
    ``"²"``, which ``int`` rejects)."""
    return token.isascii() and token.isdigit()


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def split_lines(text: str) -> list[str]:
    """``text`` cut at LF, CRLF or lone CR (old Mac files), without the endings; a final break adds no line.

    Only these three count as line breaks (not ``str.splitlines``'s form feeds or Unicode separators, which may
    be part of a name).
    """
    lines = text.split("\n") if "\r" not in text else _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_text_lines(path: str | os.PathLike) -> list[str]:
    """Lines of a UTF-8 text file without their LF / CRLF / CR endings (line ``i + 1`` is item ``i``)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    return split_lines(text)


def read_json_object(path: str | os.PathLike, missing: str = "missing") -> dict:
    """The JSON object in ``path``, read strictly (see :func:`common.jsonio.read_json_object`, where it lives)."""
    from common.jsonio import read_json_object as read

    return read(path, missing)
