"""Fixtures for video job tests: a real Redis database of their own, storage in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init masenet-n with one class, saved the way shipped weights are."""
    from tools.traffic import random_checkpoint

    return random_checkpoint(tmp_path_factory.mktemp("weights") / "random-n.safetensors", imgsz=160)
