"""Limits and auth of the stream routes, without workers: a stream waits as `starting` until a worker takes it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.helpers import REDIS_URL, make_settings, new_prefix
from tools.redis_keys import forget_prefix


@pytest.fixture
def prefix() -> Iterator[str]:
    name = new_prefix()
    yield name
    forget_prefix(REDIS_URL, name)


def test_streams_past_the_limit_get_429_until_one_is_stopped(prefix: str) -> None:
    settings = make_settings(prefix, max_streams=2, stream_allow="127.0.0.1")
    with TestClient(create_app(settings)) as client:
        ids = [
            client.post("/streams", json={"url": f"rtsp://127.0.0.1:{8554 + i}/cam"}).json()["stream_id"]
            for i in range(2)
        ]
        refused = client.post("/streams", json={"url": "rtsp://127.0.0.1:8556/cam"})
        assert refused.status_code == 429 and "MASENET_MAX_STREAMS" in refused.json()["detail"]
        assert [stream["status"] for stream in client.get("/streams").json()["streams"]] == ["starting", "starting"]
        assert client.delete(f"/streams/{ids[0]}").json()["status"] == "stopped"
        assert client.post("/streams", json={"url": "rtsp://127.0.0.1:8556/cam"}).status_code == 201
        assert client.get(f"/streams/{ids[1]}/snapshot").status_code == 409  # nothing processed yet
        assert 'masenet_rejected_requests_total{reason="streams"} 1.0' in client.get("/metrics").text


def test_stream_routes_need_the_key_when_keys_are_set(prefix: str) -> None:
    settings = make_settings(prefix, api_keys=("k1",), stream_allow="127.0.0.1")
    with TestClient(create_app(settings)) as client:
        body = {"url": "rtsp://127.0.0.1:8554/cam"}
        assert client.post("/streams", json=body).status_code == 401
        assert client.get("/streams").status_code == 401
        created = client.post("/streams", json=body, headers={"Authorization": "Bearer k1"})
        assert created.status_code == 201
        stream_id = created.json()["stream_id"]
        for path in (f"/streams/{stream_id}", f"/streams/{stream_id}/events", f"/streams/{stream_id}/snapshot"):
            assert client.get(path).status_code == 401
        assert client.delete(f"/streams/{stream_id}").status_code == 401
        assert client.delete(f"/streams/{stream_id}", headers={"Authorization": "Bearer k1"}).status_code == 200
