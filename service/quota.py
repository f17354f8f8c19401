"""Per-key limits, when API keys are on: requests per minute and images in flight, counted in Redis.

One client must not fill the queue for everyone. Every API process shares the counts (keys under
`<prefix>:quota:<key id>`, where the id is a hash of the bearer key, never the key): a fixed one-minute window
of requests, and the images a key has queued and not yet been answered for. Over a limit the answer is 429
with `Retry-After`; a single request with more images than the in-flight limit can never pass and gets 413.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from jobs.settings import Settings
from service.errors import ServiceError, UploadTooLarge


class RateLimited(ServiceError):
    """A key went past its requests per minute or its images in flight."""

    status_code = 429
    reason = "rate_limit"


def key_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


class Quota:
    """The limits of one request's key (no-ops when authentication is off)."""

    def __init__(self, connection: Any, settings: Settings, token: str | None) -> None:
        self.connection = connection  # redis.asyncio client
        self.settings = settings
        self.key = f"{settings.queue_prefix}:quota:{key_id(token)}" if token else None

    async def count_request(self, now: float | None = None) -> None:
        """Count one request in this minute's window; 429 once the key is past MASENET_KEY_REQUESTS_PER_MINUTE."""
        if self.key is None:
            return
        now = time.time() if now is None else now
        window = f"{self.key}:minute:{int(now // 60)}"
        async with self.connection.pipeline(transaction=True) as pipeline:
            pipeline.incr(window)
            pipeline.expire(window, 120)
            count, _ = await pipeline.execute()
        limit = self.settings.key_requests_per_minute
        if count > limit:
            retry_after = max(1, math.ceil(60 - now % 60))
            raise RateLimited(
                f"this API key sent more than {limit} requests this minute (MASENET_KEY_REQUESTS_PER_MINUTE); "
                f"retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )

    @asynccontextmanager
    async def images_in_flight(self, count: int) -> AsyncIterator[None]:
        """Hold `count` images against MASENET_KEY_MAX_IMAGES_IN_FLIGHT while the request is served."""
        if self.key is None:
            yield
            return
        limit = self.settings.key_max_images_in_flight
        if count > limit:
            raise UploadTooLarge(
                f"the request has {count} images, more than this API key may have in flight ({limit}, "
                "MASENET_KEY_MAX_IMAGES_IN_FLIGHT): send them in smaller requests"
            )
        key = f"{self.key}:in-flight"
        async with self.connection.pipeline(transaction=True) as pipeline:
            pipeline.incrby(key, count)
            pipeline.expire(key, math.ceil(self.settings.timeout_s) + 60)  # a crashed API cannot leak the count
            held, _ = await pipeline.execute()
        try:
            if held > limit:
                raise RateLimited(
                    f"this API key has {held - count} images in flight; with these {count} it would pass its limit "
                    f"of {limit} (MASENET_KEY_MAX_IMAGES_IN_FLIGHT): wait for answers, then retry",
                    headers={"Retry-After": "1"},
                )
            yield
        finally:
            await self.connection.decrby(key, count)
