"""Per-key limits (service.quota) on the real Redis, and through the API with keys on."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import UploadTooLarge
from service.quota import Quota, RateLimited
from tests.service.helpers import REDIS_URL, make_settings, new_prefix


def run(coroutine):
    return asyncio.run(coroutine)


async def _requests_per_minute(prefix: str) -> None:
    connection = aioredis.Redis.from_url(REDIS_URL)
    settings = make_settings(prefix, key_requests_per_minute=3)
    first, second = Quota(connection, settings, "key-a"), Quota(connection, settings, "key-b")
    minute = 1_000_040.0  # 20 s into a window
    for _ in range(3):
        await first.count_request(now=minute)
    with pytest.raises(RateLimited) as refused:
        await first.count_request(now=minute)
    assert refused.value.headers == {"Retry-After": "40"} and "MASENET_KEY_REQUESTS_PER_MINUTE" in refused.value.detail
    await second.count_request(now=minute)  # another key has its own window
    await first.count_request(now=minute + 60)  # the next minute starts afresh
    keys = [key.decode() async for key in connection.scan_iter(f"{prefix}:quota:*")]
    assert keys and not any("key-a" in key for key in keys)  # keys are hashed, never stored
    assert all([await connection.ttl(key) > 0 for key in keys])
    await connection.aclose()


def test_requests_per_minute_are_limited_per_key() -> None:
    run(_requests_per_minute(new_prefix()))


async def _images_in_flight(prefix: str) -> None:
    connection = aioredis.Redis.from_url(REDIS_URL)
    quota = Quota(connection, make_settings(prefix, key_max_images_in_flight=4), "key-a")
    async with quota.images_in_flight(3):
        with pytest.raises(RateLimited, match="3 images in flight"):
            async with quota.images_in_flight(2):
                pass
        async with quota.images_in_flight(1):
            pass
    async with quota.images_in_flight(4):  # released: the whole limit is free again
        pass
    with pytest.raises(UploadTooLarge, match="smaller requests"):
        async with quota.images_in_flight(5):
            pass
    open_quota = Quota(connection, make_settings(prefix, key_max_images_in_flight=1), None)
    async with open_quota.images_in_flight(50):  # authentication off: no limits
        pass
    await connection.aclose()


def test_images_in_flight_are_limited_per_key() -> None:
    run(_images_in_flight(new_prefix()))


def test_the_api_answers_429_with_retry_after_past_the_key_s_rate() -> None:
    settings = make_settings(new_prefix(), api_keys=("key-a", "key-b"), key_requests_per_minute=2)
    with TestClient(create_app(settings)) as client:
        # Every request counts, even one that is then refused (max_det=0 answers 422 without queueing anything).
        statuses = [
            client.post("/detect", params={"max_det": 0}, headers={"Authorization": "Bearer key-a"}).status_code
            for _ in range(3)
        ]
        assert statuses == [422, 422, 429]
        refused = client.post("/detect", params={"max_det": 0}, headers={"Authorization": "Bearer key-a"})
        assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60, refused.text
        other = client.post("/detect", params={"max_det": 0}, headers={"Authorization": "Bearer key-b"})
        assert other.status_code == 422  # key b has its own count
        assert 'masenet_rejected_requests_total{reason="rate_limit"} 2.0' in client.get("/metrics").text
