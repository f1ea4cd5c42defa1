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
# Under pytest-xdist (`make test` runs a worker per core) the workers share the controller's folder: the first to need
# the model unpacks it while the others wait (bridge.llm's unpack lock), and only the controller removes the folder.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
_LLM_CACHE = os.environ.get("SEFAR_TEST_LLM_CACHE") if _WORKER else None
if not _LLM_CACHE:
    _LLM_CACHE = tempfile.mkdtemp(prefix="sefar-test-llm-cache-")
    os.environ["SEFAR_TEST_LLM_CACHE"] = _LLM_CACHE
os.environ["SEFAR_LLM_CACHE"] = _LLM_CACHE


def pytest_unconfigure(config) -> None:
    if not hasattr(config, "workerinput"):  # the controller, or a run without workers
        shutil.rmtree(_LLM_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items) -> None:
    """Files holding a ``slow`` test run first (stable order otherwise): under ``--dist loadfile`` the workers take
    files in this order, so no long file is left to run alone at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


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


def pytest_sessionfinish(session) -> None:
    if hasattr(session.config, "workeroutput"):  # an xdist worker: hand its counts to the controller
        session.config.workeroutput["fuzz_counts"] = session.config.stash.get(FUZZ_COUNTS, {})


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """The controller adds up the fuzz counts of its workers (tests of one target may run on several)."""
    merged = node.config.stash.setdefault(FUZZ_COUNTS, {})
    for target, c in getattr(node, "workeroutput", {}).get("fuzz_counts", {}).items():
        into = merged.setdefault(target, {})
        for key, value in c.items():
            into[key] = into.get(key, 0) + value


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
