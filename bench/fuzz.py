"""The fuzz suite's counts as a result file: runs ``tests/test_fuzz.py`` on its own and records what it printed.

    python -m bench.fuzz          # about a minute on 2 cores; writes bench/results/fuzz.json

The suite is derandomized, so run alone it feeds the same inputs every time (inside the whole test suite the
counts differ a little: Hypothesis also draws constants from the project modules loaded then).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.results import Table, provenance, write_result

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/fuzz.json"))
    args = parser.parse_args(argv)
    started = provenance()
    with tempfile.TemporaryDirectory() as tmp:
        counts_file = Path(tmp) / "counts.json"
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py"],
                              cwd=ROOT, env={**os.environ, "SEFAR_FUZZ_COUNTS": str(counts_file)})
        seconds = time.perf_counter() - began
        if done.returncode != 0 or not counts_file.is_file():
            print(f"error: tests/test_fuzz.py failed (exit {done.returncode}); no result written", file=sys.stderr)
            return 1
        counts = json.loads(counts_file.read_text(encoding="utf-8"))
    table = Table("", ["target", "inputs", "clear errors", "correct results", "crashes"])
    for target, c in sorted(counts.items()):
        table.add(target, c["tried"], c["errors"], c["results"], c["crashes"])
    total = {k: sum(c[k] for c in counts.values()) for k in ("tried", "errors", "results", "crashes")}
    table.add("all", total["tried"], total["errors"], total["results"], total["crashes"])
    table.notes = (f"`python -m pytest tests/test_fuzz.py` on its own took {seconds:.0f} s. An input passes when it "
                   "gets one clean `error:` line or a result checked against what the input is; a crash is a "
                   "traceback, a hang, or memory beyond the worker's cap.")
    write_result(args.out, "Fuzz suite", [table], {"counts": counts, "seconds": round(seconds, 1)}, started=started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
