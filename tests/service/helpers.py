"""Helpers for the service tests: frames, settings, metric parsing and real worker and API processes.

Frames come from `tools.traffic` and processes are started and stopped with `tools.launch`; what is left here is
what the tests add: their Redis database, their worker settings and waiting on a worker's published state.

Redis is the local server at 127.0.0.1:6379, database 13 (MASENET_TEST_REDIS_URL overrides it); every
test module uses its own queue prefix and the database is flushed when the module ends. Workers are real
`masenet worker` processes on a random-init masenet-n checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from PIL import Image

from jobs.settings import Settings
from tools.launch import child_env, free_port, log_tail, masenet_command, spawn, stop_process, wait_until_healthy
from tools.traffic import png_bytes

__all__ = [
    "ApiProcess",
    "Served",
    "WorkerProcess",
    "decode_png",
    "make_settings",
    "metric_value",
    "new_prefix",
    "png_bytes",
    "served",
]

REDIS_URL = os.environ.get("MASENET_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
WORKER_START_TIMEOUT_S = 180.0
API_START_TIMEOUT_S = 60.0


def decode_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def metric_value(text: str, name: str) -> float | None:
    """The value of one sample line (exact name with labels) in Prometheus text format."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def make_settings(prefix: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "redis_url": REDIS_URL,
        "queue_prefix": prefix,
        "imgsz": 64,
        "timeout_s": 60.0,
        "api_keys": (),
    }
    values.update(overrides)
    return Settings(**values)


def new_prefix() -> str:
    return f"masenet-test-{uuid.uuid4().hex[:8]}"


class WorkerProcess:
    """A `masenet worker` subprocess for one queue prefix (started and stopped with tools.launch)."""

    def __init__(self, prefix: str, weights: Path | str, log_path: Path, **env: str) -> None:
        self.prefix = prefix
        self.name = f"test-{uuid.uuid4().hex[:6]}"
        self.log_path = log_path
        self.env = child_env(
            {
                "MASENET_REDIS_URL": REDIS_URL,
                "MASENET_QUEUE_PREFIX": prefix,
                "MASENET_WEIGHTS": str(weights),
                "MASENET_DEVICE": "cpu",
                "MASENET_IMGSZ": "64",
                "MASENET_MAX_BATCH": "8",
                "MASENET_MAX_DELAY_MS": "50",
                "MASENET_WORKER_METRICS_PORT": "0",
                "MASENET_RUNTIME": "torch",  # no export at start; the runtimes have their own tests
                **env,
            }
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        self.process = spawn(masenet_command("worker", "--name", self.name), self.env, self.log_path)
        return self

    def state(self, client: redis.Redis) -> dict | None:
        raw = client.get(f"{self.prefix}:workers:{self.name}")
        return json.loads(raw) if raw else None

    def wait_for(self, client: redis.Redis, status: str) -> dict:
        """Wait until the worker publishes `status` (ready or failed); returns its state record."""
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log_tail()}")
            state = self.state(client)
            if state is not None and state["status"] == status:
                return state
            time.sleep(0.2)
        raise AssertionError(f"worker not {status} within {WORKER_START_TIMEOUT_S} s:\n{self.log_tail()}")

    def metrics_url(self, client: redis.Redis) -> str:
        state = self.state(client)
        assert state is not None and state["metrics_port"], "worker published no metrics port"
        return f"http://127.0.0.1:{state['metrics_port']}/metrics"

    def stop(self) -> int | None:
        return stop_process(self.process, grace_s=20) if self.process is not None else None

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)


class ApiProcess:
    """`masenet serve` as a child process, restartable on the same port (started and stopped with tools.launch)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> ApiProcess:
        command = masenet_command("serve", "--host", "127.0.0.1", "--port", str(self.port))
        self.process = spawn(command, self.env, self.log_path)
        wait_until_healthy(self.url, API_START_TIMEOUT_S, [self.process], logs={"api": self.log_path})
        return self

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, grace_s=15)


@dataclass
class Served:
    """What `served` started: the API, the workers (a test may replace one in the list) and their queue prefix."""

    api: ApiProcess
    workers: list[WorkerProcess]
    prefix: str


@contextlib.contextmanager
def served(
    weights: Path | str,
    folder: Path,
    connection: redis.Redis,
    workers: int = 1,
    redis_url: str = REDIS_URL,
    **env: str | None,
) -> Iterator[Served]:
    """`workers` real `masenet worker` processes and one `masenet serve` on a fresh queue prefix, with `env` for all
    of them (None removes a variable; the workers' test defaults of `WorkerProcess` apply under it). Returns once
    the workers are ready and the API answers; stops everything on exit. Logs go to `folder`."""
    prefix = new_prefix()
    env = {"MASENET_REDIS_URL": redis_url, "MASENET_QUEUE_PREFIX": prefix, **env}
    processes = [WorkerProcess(prefix, weights, folder / f"worker-{index}.log", **env) for index in range(workers)]
    api = ApiProcess(child_env(env), folder / "api.log")
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.wait_for(connection, "ready")
        yield Served(api.start(), processes, prefix)
    finally:
        api.stop()
        for process in processes:
            process.stop()
