"""Per-key limits, when API keys are on: requests per minute and images in flight, counted in Redis.

One client must not fill the queue for everyone. Every API process shares the counts (keys under
`<prefix>:quota:<key id>`, where the id is a hash of the bearer key, never the key): a fixed one-minute window
of requests, and the images a key has queued and not yet been answered for. Over a limit the answer is 429
with `Retry-After`; a single request with more images than the in-flight limit can never pass and gets 413.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis

from jobs.settings import Settings
from service.errors import ServiceError, UploadTooLarge

logger = logging.getLogger(__name__)


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
        """Hold `count` images against MASENET_KEY_MAX_IMAGES_IN_FLIGHT while the request is served.

        Each request is one member of a sorted set scored by its deadline, so what a crashed API process held
        expires on its own, whatever the key keeps sending.
        """
        if self.key is None:
            yield
            return
        limit = self.settings.key_max_images_in_flight
        if count > limit:
            raise UploadTooLarge(
                f"the request has {count} images, more than this API key may have in flight ({limit}, "
                "MASENET_KEY_MAX_IMAGES_IN_FLIGHT): send them in smaller requests"
            )
        key, member = f"{self.key}:in-flight", f"{uuid.uuid4().hex}:{count}"
        now = time.time()
        deadline = now + self.settings.timeout_s + 60
        held = int(await self.connection.eval(_HOLD_SCRIPT, 1, key, now, deadline, member, count, limit))
        if held >= 0:
            raise RateLimited(
                f"this API key has {held} images in flight; with these {count} it would pass its limit of {limit} "
                "(MASENET_KEY_MAX_IMAGES_IN_FLIGHT): wait for answers, then retry",
                headers={"Retry-After": "1"},
            )
        try:
            yield
        finally:
            try:
                await self.connection.zrem(key, member)
            except redis.RedisError as exc:  # the entry expires at its deadline anyway
                logger.warning("could not release %d images in flight: %s", count, exc)


# Drop expired holds, add this one if it fits. KEYS[1] = the key's sorted set; ARGV = now, deadline, member,
# count, limit. Returns -1 when held (the request may go on), else the images already in flight.
_HOLD_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local held = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  held = held + tonumber(string.match(member, ':(%d+)$'))
end
if held + tonumber(ARGV[4]) > tonumber(ARGV[5]) then return held end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[2])))
return -1
"""
