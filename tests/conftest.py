"""Shared test fixtures."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

# GGUF files unpacked once per test session into a folder of its own (bridge.llm.unpacked_gguf), never the user's
# cache: the first load of the embedded SmolLM2 unpacks it, later ones (and spawned processes) read the folder.
_LLM_CACHE = tempfile.mkdtemp(prefix="sefar-test-llm-cache-")
os.environ["SEFAR_LLM_CACHE"] = _LLM_CACHE


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_LLM_CACHE, ignore_errors=True)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (real FineGym lists and the paper's Gym-QA files)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present beside the checkout: real FineGym/Gym-QA files unavailable")
    return SHARED_DATA


FUZZ_COUNTS = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def fuzz_counts(request) -> dict:
    """Counts of the fuzz suite (tests/test_fuzz.py), printed in the terminal summary."""
    return request.config.stash.setdefault(FUZZ_COUNTS, {})


def pytest_terminal_summary(terminalreporter, config) -> None:
    counts = config.stash.get(FUZZ_COUNTS, None)
    if not counts:
        return
    terminalreporter.section("fuzz")
    for target, c in sorted(counts.items()):
        terminalreporter.write_line(f"{target}: {c['tried']} inputs, {c['errors']} clear errors, "
                                    f"{c['results']} correct results, {c['crashes']} crashes")
    total = {k: sum(c[k] for c in counts.values()) for k in ("tried", "errors", "results", "crashes")}
    terminalreporter.write_line(f"all: {total['tried']} inputs, {total['errors']} clear errors, "
                                f"{total['results']} correct results, {total['crashes']} crashes")
    if os.environ.get("SEFAR_FUZZ_COUNTS"):  # python -m bench.fuzz records them as a result file
        Path(os.environ["SEFAR_FUZZ_COUNTS"]).write_text(json.dumps(counts, indent=1), encoding="utf-8")
