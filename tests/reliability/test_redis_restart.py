"""Redis restarted under a running worker and API: 503 while it is down, recovery by itself when it returns.

Each test uses a private `redis-server` on a free port that it starts itself (never the shared server).
The first runs it without persistence, so the restart also loses every key: the worker must republish its
readiness by itself. The second runs it with an append-only file, as the compose stack does, and restarts
it under load: image requests in flight from several clients and a video job in progress.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.helpers import ApiProcess, WorkerProcess, make_settings, new_prefix, png_bytes
from tests.synthetic_video import write_test_video
from tools.launch import free_port

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

RECOVERY_TIMEOUT_S = 90.0
OUTAGE_S = 4.0
CLIENTS = 4
REQUEST_TIMEOUT_S = 20.0  # MASENET_TIMEOUT_S of the API under load
VIDEO_FRAMES = 240


class PrivateRedis:
    """A throwaway redis-server on one port, restartable on the same port."""

    def __init__(self, directory: Path, persistent: bool = False) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("redis-server is not installed; this test starts a private one")
        self.executable = executable
        self.directory = directory
        self.persistent = persistent
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> PrivateRedis:
        command = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", "."]
        # Persistent like the compose stack's Redis (append-only file, fsync on every write), or nothing at all.
        command += ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
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


class Clients:
    """CLIENTS threads posting one frame at a time until stopped; every answer (or its absence) is recorded."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[float, int, str]] = []  # (monotonic time sent, status, detail); status 0: no answer
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(CLIENTS)]

    def run(self) -> None:
        frame = png_bytes(64, 48)
        with httpx.Client(timeout=REQUEST_TIMEOUT_S + 15.0) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    response = client.post(f"{self.url}/detect", files=[("image", ("frame.png", frame, "image/png"))])
                    detail = "" if response.status_code == 200 else response.json().get("detail", "")
                    self.answers.append((sent, response.status_code, detail))
                except httpx.HTTPError as exc:
                    self.answers.append((sent, 0, f"{type(exc).__name__}: {exc}"))
                if response.status_code != 200:
                    time.sleep(0.2)

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=REQUEST_TIMEOUT_S + 30.0)


def job_status(api: ApiProcess, job_id: str) -> dict:
    response = httpx.get(f"{api.url}/jobs/{job_id}", timeout=10.0)
    assert response.status_code == 200, response.text
    return response.json()


def test_redis_restart_under_load_answers_every_request_and_the_video_job_resumes(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    server = PrivateRedis(tmp_path, persistent=True).start()
    prefix = new_prefix()
    env = {
        **os.environ,
        "MASENET_REDIS_URL": server.url,
        "MASENET_QUEUE_PREFIX": prefix,
        "MASENET_STORAGE": str(tmp_path / "storage"),
        "MASENET_VIDEO_CHUNK_FRAMES": "24",
        "MASENET_IMGSZ": "64",
        "MASENET_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
    }
    worker = WorkerProcess(prefix, tiny_checkpoint, tmp_path / "worker.log", **env, MASENET_MAX_BATCH="4")
    api = ApiProcess(env, tmp_path / "api.log")
    video = write_test_video(tmp_path / "clip.mp4", frames=VIDEO_FRAMES)
    try:
        worker.start().wait_for(redis.Redis.from_url(server.url), "ready")
        api.start()
        with video.open("rb") as handle:
            accepted = httpx.post(
                f"{api.url}/jobs", params={"conf": 0.001}, files={"video": ("clip.mp4", handle)}, timeout=60.0
            )
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        with Clients(api.url) as clients:
            deadline = time.monotonic() + 120.0
            while job_status(api, job_id)["progress"]["frames_done"] == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            server.stop()
            down_at = time.monotonic()
            down_ready = httpx.get(f"{api.url}/readyz", timeout=10.0)
            time.sleep(OUTAGE_S)
            restart_at = time.monotonic()
            server.start()
            up_at = time.monotonic()
            ready_again = False
            while not ready_again and time.monotonic() < up_at + RECOVERY_TIMEOUT_S:
                ready_again = httpx.get(f"{api.url}/readyz", timeout=10.0).status_code == 200
                time.sleep(0.25)
            time.sleep(3.0)  # keep the load on after recovery
        final = job_status(api, job_id)
        while final["status"] in {"queued", "started"} and time.monotonic() < up_at + 240.0:
            time.sleep(0.5)
            final = job_status(api, job_id)
        result = httpx.get(f"{api.url}/jobs/{job_id}/result", timeout=30.0)
        assert worker.process is not None and worker.process.poll() is None, worker.log_tail()
    finally:
        api.stop()
        worker.stop()
        server.stop()

    assert down_ready.status_code == 503 and "unreachable" in down_ready.json()["detail"]
    assert ready_again, "the service did not recover by itself"
    statuses = {status for _, status, _ in clients.answers}
    lost = [answer for answer in clients.answers if answer[1] == 0]
    assert not lost, f"requests without an answer: {lost[:3]}"
    during = [status for sent, status, _ in clients.answers if down_at <= sent < restart_at]
    assert during and set(during) <= {503}, f"answers while Redis was down: {sorted(set(during))}"
    after = [status for sent, status, _ in clients.answers if sent > up_at + 2.0]
    assert after and set(after) == {200}, f"answers after recovery: {sorted(set(after))}"
    # Requests in flight when Redis went away end with a clear answer (a 5xx with a detail), never a hang.
    assert statuses <= {200, 500, 503, 504}, statuses
    assert all(detail for _, status, detail in clients.answers if status != 200)
    # The video job resumes: the worker's Redis calls waited through the outage (worker.presence.outage_retry)
    # and the append-only file kept the job, so every frame is there.
    assert final["status"] == "finished", final
    assert result.status_code == 200
    assert [frame["index"] for frame in result.json()["frames"]] == list(range(VIDEO_FRAMES))
