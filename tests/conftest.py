"""Shared fixtures: the real data folder and small synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imer.data import make_synthetic

REPO = Path(__file__).resolve().parent.parent


def _find_data_dir() -> Path | None:
    for candidate in (os.environ.get("IMER_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "cmu-mosi-bclstm").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data (../shared/data or $IMER_DATA); required in CI, skipped elsewhere if absent."""
    found = _find_data_dir()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("real data not found: CI needs ../shared/data beside the clone or IMER_DATA")
        pytest.skip("real data not found (set IMER_DATA)")
    return found


@pytest.fixture(scope="session")
def tiny_classification():
    return make_synthetic(task="classification", num_groups=24, min_len=2, max_len=6, dims={"audio": 6, "text": 8, "video": 5}, seed=1)


@pytest.fixture(scope="session")
def tiny_regression():
    return make_synthetic(task="regression", num_groups=24, min_len=2, max_len=6, dims={"audio": 6, "text": 8, "video": 5}, seed=2)
