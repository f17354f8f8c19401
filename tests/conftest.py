"""Shared test settings: where the reference fixture lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def fixtures_dir() -> Path:
    """MASENET_FIXTURES points at the shared fixtures; the default is ../shared/fixtures beside the repo."""
    return Path(os.environ.get("MASENET_FIXTURES", ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def reference_fixture_path() -> Path:
    path = fixtures_dir() / "masenet_n_reference.pt"
    if not path.is_file():
        pytest.skip(f"reference fixture not found at {path}; set MASENET_FIXTURES to the folder that holds it")
    return path
