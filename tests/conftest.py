"""Shared test settings and fixtures: the reference fixture, a Redis database of the tests' own, a test video."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.synthetic_video import write_test_video

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


REDIS_URL = os.environ.get("MASENET_TEST_VIDEO_REDIS_URL", "redis://127.0.0.1:6379/12")


@pytest.fixture()
def redis_connection() -> Iterator[object]:
    connection = redis.Redis.from_url(REDIS_URL)
    try:
        connection.ping()
    except redis.exceptions.ConnectionError:
        pytest.fail(f"these tests need a Redis server at {REDIS_URL}")
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture()
def prefix() -> str:
    return f"masenet-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def test_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 frames, 160x128, 25 fps, H.264 with a keyframe every 12 frames, two moving squares."""
    return write_test_video(tmp_path_factory.mktemp("video") / "squares.mp4")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` need CUDA: skipped, with the reason, where torch sees no CUDA device."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason="needs a CUDA device (marker gpu)"))


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init masenet-n with one class, saved the way shipped weights are."""
    from tools.traffic import random_checkpoint

    return random_checkpoint(tmp_path_factory.mktemp("weights") / "random-n.safetensors", imgsz=160)
