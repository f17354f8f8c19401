"""Redis restarted under a running worker and API: 503 while it is down, recovery by itself when it returns.

Uses a private `redis-server` on a free port started by the test (never the shared server), without
persistence, so the restart also loses every key: the worker must republish its readiness by itself.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.launch import free_port
from tests.service.helpers import WorkerProcess, make_settings, new_prefix, png_bytes

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

RECOVERY_TIMEOUT_S = 90.0


class PrivateRedis:
    """A throwaway redis-server on one port, restartable on the same port."""

    def __init__(self, directory: Path) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed; this test starts a private one")
        self.executable = executable
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> PrivateRedis:
        command = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(command, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1.0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return self
            except redis.RedisError:
                time.sleep(0.1)
        raise AssertionError("the private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def poll_status(client: TestClient, path: str, status: int, timeout_s: float) -> float:
    """Seconds until GET `path` answered `status`."""
    started = time.monotonic()
    last = None
    while time.monotonic() < started + timeout_s:
        last = client.get(path)
        if last.status_code == status:
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"GET {path} never answered {status}; last: {last.status_code} {last.text}")


def post_frame(client: TestClient):
    return client.post("/detect", files=[("image", ("frame.png", png_bytes(64, 48), "image/png"))])


def test_redis_restart_is_503_then_recovers(private_redis: PrivateRedis, tiny_checkpoint: Path, tmp_path: Path) -> None:
    prefix = new_prefix()
    worker = WorkerProcess(prefix, tiny_checkpoint, tmp_path / "worker.log", MASENET_REDIS_URL=private_redis.url)
    connection = redis.Redis.from_url(private_redis.url)
    try:
        worker.start().wait_for(connection, "ready")
        with TestClient(create_app(make_settings(prefix, redis_url=private_redis.url, timeout_s=60.0))) as client:
            assert post_frame(client).status_code == 200
            private_redis.stop()
            down_ready = client.get("/readyz")
            down_detect = post_frame(client)
            private_redis.start()
            recovery_s = poll_status(client, "/readyz", 200, RECOVERY_TIMEOUT_S)
            logger.info("ready again %.1f s after Redis came back", recovery_s)
            recovered = post_frame(client)
        assert worker.process is not None and worker.process.poll() is None, worker.log_tail()
    finally:
        worker.stop()
    assert down_ready.status_code == 503 and "unreachable" in down_ready.json()["detail"]
    assert down_detect.status_code == 503 and down_detect.headers["retry-after"]
    assert "unreachable" in down_detect.json()["detail"]
    assert recovered.status_code == 200, recovered.text
