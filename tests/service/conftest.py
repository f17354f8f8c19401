"""Fixtures for the service tests: a real Redis database of their own and a tiny checkpoint.

Redis is the local server at 127.0.0.1:6379, database 13 (MASENET_TEST_REDIS_URL overrides it); every
test module uses its own queue prefix and the database is flushed when the module ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.service.helpers import REDIS_URL


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"these tests need a Redis server at {REDIS_URL} ({exc}); set MASENET_TEST_REDIS_URL")
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init masenet-n with one class, saved the way shipped weights are."""
    from tools.traffic import random_checkpoint

    return random_checkpoint(tmp_path_factory.mktemp("weights") / "tiny-n.safetensors", imgsz=64)
