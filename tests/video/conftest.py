"""Fixtures for video job tests: a real Redis database of their own, storage in a temporary folder."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.video.synthetic import write_test_video

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


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init masenet-n with one class, saved the way shipped weights are."""
    import torch

    from model.checkpoint import save_checkpoint
    from model.masenet import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "random-n.safetensors"
    return save_checkpoint(path, build_model("masenet", scale="n", nc=1), class_names=["target"], imgsz=160)
