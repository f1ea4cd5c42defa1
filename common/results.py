"""Result files: what a benchmark or the quickstart measured, where, when and from which commit.

Every script that measures something writes one JSON file (by default under ``bench/results/``) through
:func:`write_result`::

    {"title": ..., "provenance": {"command", "machine", "commit", "date", ...},
     "tables": [{"title", "columns", "rows", "notes"}], "data": {...}}

``tables`` is what a reader sees (``python -m bench.report`` turns every result file into ``docs/results.md``);
``data`` keeps the raw numbers for other scripts. The same tables print to the terminal as Markdown, so what a
run prints, what its file holds and what the report shows are one thing.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.errors import DataError
from common.jsonio import read_json, write_json

__all__ = ["Table", "provenance", "machine_description", "format_table", "write_result", "read_result"]

REPO_ROOT = Path(__file__).resolve().parents[1]
PROVENANCE_KEYS = ("command", "machine", "commit", "date")


@dataclass
class Table:
    """One table of a result: column names, rows of cells (str, int, float or None) and a note under it."""

    title: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)
    notes: str = ""

    def add(self, *cells) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"table {self.title!r}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"non-finite value {value!r} in a result table")
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_table(table: Table | dict) -> str:
    """A Markdown table (a float shows 2 decimals; format cells as strings for anything else)."""
    t = table if isinstance(table, Table) else Table(**table)
    lines = ["| " + " | ".join(_cell(c) for c in t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


# The widest vector instructions that decide CPU timings here (bf16 runs natively only with the first two), best first.
_CPU_FEATURES = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX512"), ("avx2", "AVX2"))


def _cpuinfo(text: str | None = None) -> tuple[str | None, str | None]:
    """``(model name, widest vector extension)`` from ``/proc/cpuinfo`` (``text``: its contents, for tests)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None, None
    model = flags = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        elif key.strip() == "flags" and flags is None:
            flags = set(value.split())
    feature = next((name for flag, name in _CPU_FEATURES if flag in (flags or ())), None)
    return model, feature


def _cpu_model() -> str:
    """``"<model name>, <widest vector extension>"`` where /proc/cpuinfo tells them, else what platform does."""
    model, feature = _cpuinfo()
    model = model or platform.processor() or platform.machine()
    return f"{model}, {feature}" if feature else model


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def machine_description() -> str:
    """``"2-core x86_64 CPU (<model>, AVX2), 23 GiB, no GPU"``; the GPUs by name where torch sees any. The vector
    extension is there because it decides the CPU timings: bf16 is native only with AVX512-BF16 or AMX."""
    memory = _memory_gib()
    text = f"{os.cpu_count()}-core {platform.machine()} CPU ({_cpu_model()})"
    if memory:
        text += f", {memory:.0f} GiB"
    gpus = []
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return text + (", " + ", ".join(gpus) if gpus else ", no GPU")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _commit() -> str:
    head = _git("rev-parse", "--short=10", "HEAD")
    if head is None:
        return "unknown (not a git checkout)"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return head + ("+changes" if dirty else "")


def _command(argv: list[str]) -> str:
    """The command as a user would type it again: repository paths relative, the interpreter as ``python``."""
    first = Path(argv[0])
    if first.name == "__main__.py":
        head = ["python", "-m", first.parent.name]
    elif first.suffix != ".py":  # a console script such as sefar
        head = [first.name]
    else:
        try:
            rel = first.resolve().relative_to(REPO_ROOT)
            module = ".".join(rel.with_suffix("").parts)
            head = ["python", "-m", module] if rel.parts[0] == "bench" else ["python", str(rel)]
        except ValueError:
            head = ["python", first.name]
    return shlex.join(head + [_relative(a) for a in argv[1:]])


def _relative(arg: str) -> str:
    """An absolute path inside the repository (or the working directory) as a relative one; others unchanged."""
    key, sep, value = arg.partition("=") if "=" in arg and not arg.startswith("/") else ("", "", arg)
    if os.path.isabs(value):
        for base in (Path.cwd(), REPO_ROOT):
            try:
                value = str(Path(value).relative_to(base)) or "."
                break
            except ValueError:
                continue
    return key + sep + value


def provenance(argv: list[str] | None = None, **extra) -> dict:
    """Where a measurement comes from: the command, the machine, the commit and the UTC date (plus the load
    average at the time, so a reader sees whether other jobs shared the CPU)."""
    record = {
        "command": _command(list(sys.argv if argv is None else argv)),
        "machine": machine_description(),
        "commit": _commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
    }
    if "torch" in sys.modules:
        record["torch"] = sys.modules["torch"].__version__
    try:
        record["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return record | extra


def write_result(path: str | os.PathLike, title: str, tables: list[Table], data: dict | None = None,
                 summary: str = "", argv: list[str] | None = None, started: dict | None = None) -> dict:
    """Write a result file atomically (strict JSON: NaN or infinity is an error, never written) and print its
    tables. ``started`` is a :func:`provenance` taken when the run began (its load average is kept as
    ``load_average_start``)."""
    prov = provenance(argv)
    if started is not None:  # the code that ran is the one at the start; the date is when it began
        prov["load_average_start"] = started.get("load_average")
        prov["date"], prov["commit"] = started["date"], started["commit"]
    record = {"title": title, "summary": summary, "provenance": prov,
              "tables": [asdict(t) if isinstance(t, Table) else t for t in tables], "data": data or {}}
    write_json(path, record, indent=1, ensure_ascii=False)
    for t in record["tables"]:
        print(f"\n{t['title']}\n" if t["title"] else "")
        print(format_table(t))
    return record


def read_result(path: str | os.PathLike) -> dict:
    """A result file, checked: strict JSON, a title, provenance with every key, tables whose rows fit."""
    path = Path(path)
    record = read_json(path)
    if not isinstance(record, dict) or not isinstance(record.get("title"), str):
        raise DataError(path, "not a result file: expected an object with a title")
    prov = record.get("provenance")
    missing = [k for k in PROVENANCE_KEYS if not isinstance(prov, dict) or not prov.get(k)]
    if missing:
        raise DataError(path, f"provenance lacks {', '.join(missing)}")
    for i, t in enumerate(record.get("tables", [])):
        try:
            table = Table(**t)
        except TypeError as err:
            raise DataError(path, f"table {i}: {err}") from None
        bad = [j for j, row in enumerate(table.rows) if len(row) != len(table.columns)]
        if bad:
            raise DataError(path, f"table {table.title!r}: row {bad[0]} has the wrong number of cells")
    return record
