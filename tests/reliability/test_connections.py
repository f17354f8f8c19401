"""Connections a client cannot hold, and a shutdown that loses no request: a real `masenet serve` process.

- A body trickled at 10 bytes/s is cut at the default deadline (10 s of grace, then 1 KiB/s on average).
- Half-sent headers and a connection that sends nothing are closed after their (here shortened) deadlines.
- SIGTERM: /readyz answers 503 while the API drains, a request in flight is answered, then the process exits.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.service.helpers import REDIS_URL, ApiProcess, new_prefix, served
from tools.traffic import encode_png, synthetic_frames

pytestmark = pytest.mark.slow

SHORT_S = 2.0  # MASENET_HEADER_TIMEOUT_S and MASENET_IDLE_TIMEOUT_S in these tests


def environment(prefix: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "MASENET_REDIS_URL": REDIS_URL, "MASENET_QUEUE_PREFIX": prefix, **extra}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiProcess]:
    env = environment(new_prefix(), MASENET_HEADER_TIMEOUT_S=str(SHORT_S), MASENET_IDLE_TIMEOUT_S=str(SHORT_S))
    process = ApiProcess(env, tmp_path / "api.log")
    try:
        yield process.start()
    finally:
        process.stop()


def seconds_until_closed(connection: socket.socket, send: bytes = b"", every_s: float = 0.0, limit_s: float = 60.0):
    """Send `send` one byte every `every_s` (or nothing) until the server closes the connection; the seconds it took."""
    started = time.monotonic()
    connection.settimeout(0.05)
    position = 0
    while time.monotonic() - started < limit_s:
        try:
            if connection.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            pass
        except OSError:
            return time.monotonic() - started
        if position < len(send) and every_s:
            try:
                connection.send(send[position : position + 1])
            except OSError:
                return time.monotonic() - started
            position += 1
            time.sleep(every_s)
    return None


def test_a_body_trickled_at_10_bytes_per_second_is_cut_within_60_s(api: ApiProcess) -> None:
    body = b"x" * 100_000
    head = (
        f"POST /detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", api.port)) as connection:
        connection.sendall(head)
        took = seconds_until_closed(connection, body, every_s=0.1)
    assert took is not None and 9.0 < took < 15.0, took  # the default: 10 s of grace, then under 1 KiB/s
    log = api.log_path.read_text()
    assert "under 1024 B/s" in log and "ERROR" not in log


def test_half_sent_headers_and_silent_connections_are_closed(api: ApiProcess) -> None:
    with socket.create_connection(("127.0.0.1", api.port)) as silent:
        took = seconds_until_closed(silent)
    assert took is not None and SHORT_S - 0.1 < took < SHORT_S + 2.0, took
    with socket.create_connection(("127.0.0.1", api.port)) as slow:
        took = seconds_until_closed(slow, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100, 0.2)
    assert took is not None and SHORT_S - 0.1 < took < SHORT_S + 2.0, took
    assert httpx.get(f"{api.url}/healthz", timeout=5).status_code == 200  # a normal client is served meanwhile


def test_sigterm_drains_then_exits_without_losing_the_request_in_flight(
    tiny_checkpoint: Path, redis_client: redis.Redis, tmp_path: Path
) -> None:
    with served(tiny_checkpoint, tmp_path, redis_client, MASENET_IMGSZ="64", MASENET_DRAIN_S="2") as stack:
        api = stack.api
        image = encode_png(synthetic_frames(640, 512, count=1)[0])
        files = [("image", (f"f{index}.png", image, "image/png")) for index in range(16)]
        answers: list[int] = []
        request = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"{api.url}/detect", params={"imgsz": 640}, files=files, timeout=60).status_code
            )
        )
        request.start()
        time.sleep(0.5)
        assert httpx.get(f"{api.url}/readyz", timeout=5).status_code == 200
        assert api.process is not None
        api.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        draining = httpx.get(f"{api.url}/readyz", timeout=5)
        assert draining.status_code == 503 and "shutting down" in draining.json()["detail"]
        request.join(timeout=60)
        assert answers == [200]
        # uvicorn re-raises the signal it handled once it has stopped, so the exit says "terminated by SIGTERM"
        assert api.process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "finishing the requests in flight" in api.log_path.read_text()
