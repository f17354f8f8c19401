"""Start and stop the local pieces of the service: a private Redis, workers and the API.

Used by `masenet up` and `masenet bench service`. Every child runs in one process group that this module
creates, so stopping the group stops everything that was started, and nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis

logger = logging.getLogger(__name__)

REDIS_START_TIMEOUT_S = 10.0
STOP_GRACE_S = 10.0


class LaunchError(RuntimeError):
    """A local component could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def redis_reachable(url: str, timeout_s: float = 1.0) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, ValueError):
        return False


@dataclass
class ProcessGroup:
    """Child processes sharing one process group, stopped together."""

    processes: list[subprocess.Popen] = field(default_factory=list)
    temp_dirs: list[tempfile.TemporaryDirectory] = field(default_factory=list)

    @property
    def group_id(self) -> int | None:
        return self.processes[0].pid if self.processes else None

    def start(
        self, name: str, command: list[str], env: Mapping[str, str] | None = None, log_path: Path | None = None
    ) -> subprocess.Popen:
        """Start a child in this group (the first child founds the group)."""
        output = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            command,
            env=dict(env) if env is not None else None,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            process_group=self.group_id or 0,
        )
        logger.info("started %s (pid %d): %s", name, process.pid, " ".join(command))
        self.processes.append(process)
        return process

    def first_exited(self) -> subprocess.Popen | None:
        return next((process for process in self.processes if process.poll() is not None), None)

    def stop(self) -> None:
        """Stop the children newest first (API and workers before Redis), then SIGKILL the group if needed."""
        group = self.group_id
        deadline = time.monotonic() + STOP_GRACE_S
        for process in reversed(self.processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
        if group is not None and any(process.poll() is None for process in self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            for process in self.processes:
                process.wait()
        for temp_dir in self.temp_dirs:
            temp_dir.cleanup()
        self.temp_dirs.clear()


def start_private_redis(group: ProcessGroup) -> str:
    """Start `redis-server` on a free port without persistence in a temporary folder; returns its URL."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise LaunchError(
            "Redis is not reachable and redis-server is not installed: install Redis (e.g. `apt-get install "
            "redis-server` or `brew install redis`) or point MASENET_REDIS_URL at a running Redis"
        )
    temp_dir = tempfile.TemporaryDirectory(prefix="masenet-redis-")
    group.temp_dirs.append(temp_dir)
    port = free_port()
    command = [
        executable,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", temp_dir.name,
    ]  # fmt: skip
    process = group.start("redis-server", command, log_path=Path(temp_dir.name) / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LaunchError(f"redis-server exited with code {process.returncode}")
        if redis_reachable(url, timeout_s=0.5):
            return url
        time.sleep(0.1)
    raise LaunchError(f"redis-server did not answer on port {port} within {REDIS_START_TIMEOUT_S:g} s")


def masenet_command(*arguments: str) -> list[str]:
    """The `masenet` command line run with this interpreter."""
    return [sys.executable, "-m", "service.cli", *arguments]


def child_env(overrides: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    return env


def wait_until_ready(base_url: str, timeout_s: float, group: ProcessGroup | None = None) -> None:
    """Poll GET /readyz until it answers 200; LaunchError on timeout or if a child exits."""
    import httpx

    deadline = time.monotonic() + timeout_s
    detail = "no answer"
    while time.monotonic() < deadline:
        if group is not None and (exited := group.first_exited()) is not None:
            raise LaunchError(f"a service process exited early (code {exited.returncode}): {' '.join(exited.args)}")
        try:
            response = httpx.get(f"{base_url}/readyz", timeout=2.0)
            if response.status_code == 200:
                return
            detail = response.json().get("detail", response.text)
        except (httpx.HTTPError, ValueError) as exc:
            detail = str(exc)
        time.sleep(0.5)
    raise LaunchError(f"the service was not ready within {timeout_s:g} s: {detail}")
