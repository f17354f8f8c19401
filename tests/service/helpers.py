"""Helpers for the service tests: frames, settings, metric parsing and real worker processes.

Redis is the local server at 127.0.0.1:6379, database 13 (MASENET_TEST_REDIS_URL overrides it); every
test module uses its own queue prefix and the database is flushed when the module ends. Workers are real
`masenet worker` processes on a random-init masenet-n checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import redis
from PIL import Image

from jobs.settings import Settings
from service.launch import free_port, masenet_command

REDIS_URL = os.environ.get("MASENET_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
WORKER_START_TIMEOUT_S = 180.0
API_START_TIMEOUT_S = 60.0


def png_bytes(width: int = 96, height: int = 64, seed: int = 0, bits: int = 8, channels: int = 1) -> bytes:
    """A small dark frame with a few bright specks, 8 or 16 bit, grey or RGB."""
    rng = np.random.default_rng(seed)
    peak = 65535 if bits == 16 else 255
    dtype = np.uint16 if bits == 16 else np.uint8
    frame = rng.integers(0, peak // 6, size=(height, width), dtype=dtype)
    for _ in range(3):
        y, x = int(rng.integers(2, height - 2)), int(rng.integers(2, width - 2))
        frame[y - 1 : y + 2, x - 1 : x + 2] = peak
    if channels == 3:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


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
    """A `masenet worker` subprocess for one queue prefix."""

    def __init__(self, prefix: str, weights: Path | str, log_path: Path, **env: str) -> None:
        self.prefix = prefix
        self.name = f"test-{uuid.uuid4().hex[:6]}"
        self.log_path = log_path
        self.env = {
            **os.environ,
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
        self.process: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--name", self.name],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
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
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class ApiProcess:
    """`masenet serve` as a child process, restartable on the same port."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> ApiProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        command = masenet_command("serve", "--host", "127.0.0.1", "--port", str(self.port))
        self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + API_START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the API exited early:\n{self.log_path.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the API did not answer /healthz within {API_START_TIMEOUT_S:g} s")

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
