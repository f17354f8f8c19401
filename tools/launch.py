"""Start and stop a local stack: a private Redis, `masenet worker` processes and the API (`masenet serve`).

The one launcher of the project: `masenet up`, the benchmarks (`masenet bench service|video|load`),
`deploy/live_stack.py` and the tests' process helpers (`tests/service/helpers.py`) start their processes here.
`local_stack` starts a whole stack and stops it on exit; `Stack` adds workers to a running one. Every child of a
`ProcessGroup` runs in one process group that the group creates, so stopping the group stops everything that was
started, and nothing else. What a stack leaves in a shared Redis is deleted by `tools.redis_keys.forget_prefix`.
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
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import redis

from tools.redis_keys import forget_prefix

logger = logging.getLogger(__name__)

REDIS_START_TIMEOUT_S = 10.0
STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 300.0
POLL_S = 0.2
T = TypeVar("T")


class LaunchError(RuntimeError):
    """A local component could not be started, or did not answer in time."""


class _NotYet(Exception):
    """Raised by a readiness check to say why it is not there yet (kept for the timeout's message)."""


# ------------------------------------------------------------------------------------------ processes


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


def masenet_command(*arguments: str) -> list[str]:
    """The `masenet` command line run with this interpreter."""
    return [sys.executable, "-m", "service.cli", *arguments]


def child_env(overrides: Mapping[str, str | None]) -> dict[str, str]:
    """This process's environment with `overrides` applied (a None value removes the variable)."""
    env = dict(os.environ)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def spawn(
    command: list[str],
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    *,
    process_group: int | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Start a child, its output appended to `log_path` (inherited when None), optionally in a process group."""
    output = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115 - the child keeps its own copy
    try:
        return subprocess.Popen(
            command,
            env=dict(env) if env is not None else None,
            stdout=output,
            stderr=subprocess.STDOUT if output is not None else None,
            cwd=cwd,
            process_group=process_group,
        )
    finally:
        if output is not None:
            output.close()


def stop_process(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM, then SIGKILL after `grace_s`; returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def log_tails(logs: Mapping[str, Path], lines: int = 40) -> str:
    """The last lines of each process log that exists, for failure messages."""
    return "\n".join(f"--- {name} ---\n{log_tail(path, lines)}" for name, path in logs.items() if path.is_file())


@dataclass
class ProcessGroup:
    """Child processes sharing one process group, stopped together."""

    processes: list[subprocess.Popen] = field(default_factory=list)
    temp_dirs: list[tempfile.TemporaryDirectory] = field(default_factory=list)

    @property
    def group_id(self) -> int | None:
        return self.processes[0].pid if self.processes else None

    def start(
        self,
        name: str,
        command: list[str],
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen:
        """Start a child in this group (the first child founds the group)."""
        process = spawn(command, env, log_path, process_group=self.group_id or 0, cwd=cwd)
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


# ------------------------------------------------------------------------------------------ readiness


def wait_until(
    check: Callable[[], T],
    timeout_s: float,
    what: str,
    *,
    processes: Iterable[subprocess.Popen] = (),
    logs: Mapping[str, Path] | None = None,
) -> T:
    """Call `check` until it returns something true and return that; LaunchError, with the logs' tails, after
    `timeout_s` or as soon as one of `processes` exits. A check that raises an HTTP, OS or parsing error is
    not there yet."""
    deadline = time.monotonic() + timeout_s
    detail = "no answer"
    while True:
        for process in processes:
            if process.poll() is not None:
                command = " ".join(str(part) for part in process.args)
                message = f"a process exited early (code {process.returncode}) while waiting for {what}: {command}"
                raise LaunchError("\n".join(filter(None, [message, log_tails(logs or {})])))
        try:
            if value := check():
                return value
        except _NotYet as exc:
            detail = str(exc)
        except (httpx.HTTPError, redis.RedisError, OSError, ValueError, KeyError) as exc:  # not up yet
            detail = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            message = f"{what} was not ready within {timeout_s:g} s: {detail}"
            raise LaunchError("\n".join(filter(None, [message, log_tails(logs or {})])))
        time.sleep(POLL_S)


def wait_until_ready(
    base_url: str,
    timeout_s: float,
    group: ProcessGroup | None = None,
    *,
    workers: int = 0,
    logs: Mapping[str, Path] | None = None,
) -> None:
    """Poll GET /readyz until it answers 200 naming at least `workers` ready workers; LaunchError on timeout or
    if a child of `group` exits."""

    def ready() -> bool:
        response = httpx.get(f"{base_url}/readyz", timeout=2.0)
        if response.status_code != 200:
            raise _NotYet(response.json().get("detail", response.text))
        named = response.json().get("workers", [])
        if len(named) < workers:
            raise _NotYet(f"{len(named)} of {workers} workers ready")
        return True

    processes = group.processes if group is not None else ()
    wait_until(ready, timeout_s, f"the service at {base_url}", processes=processes, logs=logs)


def wait_until_healthy(
    base_url: str,
    timeout_s: float,
    processes: Iterable[subprocess.Popen] = (),
    logs: Mapping[str, Path] | None = None,
) -> None:
    """Poll GET /healthz (the API answers, workers or not) until it answers 200."""

    def healthy() -> bool:
        return httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200

    wait_until(healthy, timeout_s, f"the API at {base_url}", processes=processes, logs=logs)


# ---------------------------------------------------------------------------------------------- stack


@dataclass
class Stack:
    """A started local stack: its process group, the environment every child gets and where their logs go."""

    group: ProcessGroup
    env: dict[str, str]
    redis_url: str
    log_dir: Path | None = None
    log_level: str | None = None  # --log-level of every `masenet` child (default: the command's own)
    api_url: str = ""
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def _start(self, name: str, *arguments: str) -> subprocess.Popen:
        options = ("--log-level", self.log_level) if self.log_level else ()
        log_path = self.log_dir / f"{name}.log" if self.log_dir is not None else None
        if log_path is not None:
            self.logs[name] = log_path
        return self.group.start(name, masenet_command(*options, *arguments), self.env, log_path)

    def start_worker(self, name: str | None = None) -> subprocess.Popen:
        """One more `masenet worker` (`--name name`; unnamed: the worker's default name, logged as `worker`)."""
        key = name or ("worker" if "worker" not in self.workers else f"worker-{len(self.workers)}")
        process = self._start(key, "worker", *(("--name", name) if name else ()))
        self.workers[key] = process
        return process

    def start_api(self, host: str = "127.0.0.1", port: int | None = None) -> str:
        """`masenet serve` on `port` (default: a free one); returns its URL (127.0.0.1 for a wildcard host)."""
        port = port or free_port()
        self._start("api", "serve", "--host", host, "--port", str(port))
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.api_url = f"http://{shown}:{port}"
        return self.api_url

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until /readyz names every worker started so far (LaunchError if a child exits or on timeout)."""
        wait_until_ready(self.api_url, timeout_s, self.group, workers=len(self.workers), logs=self.logs)


@contextlib.contextmanager
def local_stack(
    env: Mapping[str, str | None] | None = None,
    *,
    workers: int = 1,
    redis_url: str | None = None,
    prefix: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    log_dir: Path | None = None,
    log_level: str | None = None,
    worker_name: str | None = None,
    private_storage: bool = False,
    ready_timeout_s: float | None = READY_TIMEOUT_S,
) -> Iterator[Stack]:
    """Redis, `workers` worker processes and one API, all stopped on exit.

    Redis is `redis_url`, or a private `redis-server` when None. `env` holds extra variables for every child
    (`MASENET_*`; None removes one); `prefix` sets MASENET_QUEUE_PREFIX, and with a given Redis its keys are
    deleted on exit (`forget_prefix`). Workers are named `<worker_name>-<index>` (default: their own names).
    Logs go to `<log_dir>/<name>.log` (default: this process's output). `private_storage` gives the stack a
    temporary MASENET_STORAGE, removed on exit. Unless `ready_timeout_s` is None, waits until every worker is
    ready.
    """
    group = ProcessGroup()
    try:
        url = redis_url or start_private_redis(group)
        overrides: dict[str, str | None] = {"MASENET_REDIS_URL": url}
        if prefix:
            overrides["MASENET_QUEUE_PREFIX"] = prefix
        if private_storage:
            storage = tempfile.TemporaryDirectory(prefix="masenet-storage-", dir=log_dir)
            group.temp_dirs.append(storage)
            overrides["MASENET_STORAGE"] = storage.name
        overrides.update(env or {})
        stack = Stack(group, child_env(overrides), url, log_dir=log_dir, log_level=log_level)
        for index in range(workers):
            stack.start_worker(f"{worker_name}-{index}" if worker_name else None)
        stack.start_api(host, port)
        if ready_timeout_s is not None:
            stack.wait_ready(ready_timeout_s)
        yield stack
    finally:
        group.stop()
        if redis_url and prefix:
            forget_prefix(redis_url, prefix)
