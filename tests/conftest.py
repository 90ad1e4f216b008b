"""Shared fixtures. ``shared`` points at ../shared (real data/weights); tests that need it skip without it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DETKIT_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared() -> Path:
    """The ../shared folder (override with DETKIT_SHARED); skips the test when absent."""
    if not (SHARED / "README.md").is_file():
        pytest.skip(f"../shared not found at {SHARED} (real-data tier needs it)")
    return SHARED


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
