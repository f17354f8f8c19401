"""Clients that leave cost nothing: against a real `masenet serve` process, a real worker and Redis.

- An upload cut off mid-body (the client closes its socket) is answered 499, a client outcome in the metrics
  and logs, never a 500.
- A /detect client that gives up while its images wait in the queue: the API cancels its queued jobs and the
  worker skips the ones it already holds, so most of the work is never computed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from rq import Queue

from tests.service.helpers import ApiProcess, metric_value, served
from tools.traffic import encode_png, synthetic_frames

pytestmark = pytest.mark.slow

CLIENTS, IMAGES_PER_CLIENT, PATIENCE_S = 4, 24, 1.0
SIDE = 640  # each image is served at imgsz 640: about a tenth of a second of CPU, so 96 of them take seconds


@pytest.fixture
def stack(tiny_checkpoint: Path, redis_client: redis.Redis, tmp_path: Path) -> Iterator[tuple[ApiProcess, str]]:
    with served(tiny_checkpoint, tmp_path, redis_client, MASENET_IMGSZ="64", MASENET_MAX_BATCH="4") as stack:
        yield stack.api, stack.prefix


def metrics(api: ApiProcess) -> str:
    return httpx.get(f"{api.url}/metrics", timeout=10.0).text


def cut_off_upload(api: ApiProcess, path: str, field: str) -> None:
    """Send the headers and half of a multipart body that declares more, then close the socket."""
    boundary = "cutoff"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="a.bin"\r\n\r\n'.encode()
    body = head + b"\x00" * 200_000
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body) * 2}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as connection:
        connection.sendall(request + body)
        time.sleep(0.3)


def test_a_cut_off_upload_is_a_client_outcome_not_a_server_error(stack: tuple[ApiProcess, str]) -> None:
    api, _ = stack
    for path, field in (("/detect", "image"), ("/jobs", "video")):
        cut_off_upload(api, path, field)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = metrics(api)
        gone = [
            metric_value(text, f'masenet_http_requests_total{{method="POST",route="{p}",status="499"}}')
            for p in ("/detect", "/jobs")
        ]
        if all(gone):
            break
        time.sleep(0.2)
    assert gone == [1.0, 1.0], text
    assert 'status="500"' not in text
    assert metric_value(text, 'masenet_rejected_requests_total{reason="client_gone"}') == 2.0
    log = api.log_path.read_text()
    assert "ERROR" not in log and "-> 499" in log


def test_images_of_clients_that_left_are_not_computed(stack: tuple[ApiProcess, str], redis_client: redis.Redis) -> None:
    api, prefix = stack
    image = encode_png(synthetic_frames(SIDE, SIDE // 5 * 4, count=1)[0])
    files = [("image", (f"f{index}.png", image, "image/png")) for index in range(IMAGES_PER_CLIENT)]
    outcomes: list[str] = []

    def impatient_client() -> None:
        try:
            httpx.post(f"{api.url}/detect", params={"imgsz": SIDE}, files=files, timeout=PATIENCE_S)
            outcomes.append("answered")
        except httpx.TimeoutException:
            outcomes.append("left")

    clients = [threading.Thread(target=impatient_client) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    assert outcomes == ["left"] * CLIENTS
    queue = Queue(f"{prefix}:images", connection=redis_client)
    time.sleep(8.0)  # whatever the worker still does for them ends by then
    computed = queue.finished_job_registry.count + queue.failed_job_registry.count
    total = CLIENTS * IMAGES_PER_CLIENT
    assert computed <= total // 2, f"{computed} of {total} images were computed for clients that had left"
    assert len(queue) == 0  # nothing of theirs is left waiting
    text = metrics(api)
    assert metric_value(text, "masenet_abandoned_images_total") >= total - computed - 2 * 4
    assert 'status="500"' not in text
    assert_nothing_lives_forever(redis_client, prefix, queue)


def assert_nothing_lives_forever(connection: redis.Redis, prefix: str, queue: Queue) -> None:
    """After every kind of image job ending (answered, canceled for a client that left), each job's keys expire;
    only the queue's own structures (its list and registries) stay."""
    ids = {*queue.finished_job_registry.get_job_ids(), *queue.failed_job_registry.get_job_ids()}
    ids |= set(queue.canceled_job_registry.get_job_ids())
    assert ids
    forever = [
        key.decode()
        for key in connection.scan_iter("*")
        if (prefix in key.decode() or any(job_id in key.decode() for job_id in ids)) and connection.ttl(key) == -1
    ]
    structural = ("rq:queue:", "rq:wip:", "rq:workers:", "rq:finished:", "rq:failed:", "rq:canceled:", "rq:deferred:")
    assert [key for key in forever if not key.startswith(structural)] == []
