"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (real FineGym lists and the paper's Gym-QA files)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present beside the checkout: real FineGym/Gym-QA files unavailable")
    return SHARED_DATA
