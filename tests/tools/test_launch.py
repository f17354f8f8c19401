"""The launcher (tools/launch.py): process groups, a private Redis, waiting for readiness and a local stack.
No model: the stack test starts the API alone."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from tools.launch import (
    LaunchError,
    ProcessGroup,
    child_env,
    free_port,
    local_stack,
    redis_reachable,
    spawn,
    start_private_redis,
    wait_until,
    wait_until_healthy,
)


def test_missing_redis_server_gives_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(LaunchError, match="redis-server is not installed"):
        start_private_redis(ProcessGroup())


def test_private_redis_starts_and_the_group_stops_everything() -> None:
    group = ProcessGroup()
    try:
        url = start_private_redis(group)
        sleeper = group.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
        assert redis_reachable(url)
        assert group.first_exited() is None
        assert sleeper.pid != group.group_id  # joined the group founded by redis-server
    finally:
        group.stop()
    assert all(process.poll() is not None for process in group.processes)
    assert not redis_reachable(url, timeout_s=0.2)
    assert group.temp_dirs == []


def test_unreachable_redis_and_free_ports() -> None:
    port = free_port()
    assert 0 < port < 65536
    assert not redis_reachable(f"redis://127.0.0.1:{port}/0", timeout_s=0.2)
    assert not redis_reachable("not a url")


def test_child_env_overrides_and_removes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASENET_API_KEYS", "k1")
    env = child_env({"MASENET_IMGSZ": "64", "MASENET_API_KEYS": None})
    assert env["MASENET_IMGSZ"] == "64" and "MASENET_API_KEYS" not in env and env["PATH"]


def test_waiting_stops_when_a_child_exits_and_shows_its_log(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    child = spawn([sys.executable, "-c", "print('model file missing'); raise SystemExit(3)"], log_path=log)
    with pytest.raises(LaunchError, match="exited early \\(code 3\\)") as raised:
        wait_until_healthy(f"http://127.0.0.1:{free_port()}", 30.0, [child], logs={"child": log})
    assert "model file missing" in str(raised.value)
    with pytest.raises(LaunchError, match="the answer was not ready within 0.3 s"):
        wait_until(lambda: False, 0.3, "the answer")


def test_local_stack_starts_redis_and_the_api_and_stops_them(tmp_path: Path) -> None:
    with local_stack(workers=0, log_dir=tmp_path, private_storage=True, ready_timeout_s=None) as stack:
        wait_until_healthy(stack.api_url, 60.0, stack.group.processes, stack.logs)
        assert redis_reachable(stack.redis_url)
        assert stack.env["MASENET_REDIS_URL"] == stack.redis_url
        storage = Path(stack.env["MASENET_STORAGE"])
        assert storage.is_dir() and storage.parent == tmp_path
        assert set(stack.logs) == {"api"} and stack.logs["api"] == tmp_path / "api.log"
        readyz = httpx.get(f"{stack.api_url}/readyz", timeout=5.0)
        assert readyz.status_code == 503  # no worker
    assert all(process.poll() is not None for process in stack.group.processes)
    assert not redis_reachable(stack.redis_url, timeout_s=0.2)
    assert not storage.exists()


def test_every_benchmark_is_a_subcommand() -> None:
    from service.cli import build_parser

    parser = build_parser()
    for name in ("model", "service", "video", "load"):
        args = parser.parse_args(["bench", name])
        assert args.bench == name and callable(args.func)
