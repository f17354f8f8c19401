"""Local process management for `masenet up` and `masenet bench service` (no model)."""

from __future__ import annotations

import sys

import pytest

from service.launch import LaunchError, ProcessGroup, free_port, redis_reachable, start_private_redis


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


def test_every_benchmark_is_a_subcommand() -> None:
    from service.cli import build_parser

    parser = build_parser()
    for name in ("model", "service", "video", "load"):
        args = parser.parse_args(["bench", name])
        assert args.bench == name and callable(args.func)
