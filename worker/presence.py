"""How a worker shows itself (`WorkerState` under `<prefix>:workers:<name>`); Redis calls that survive outages."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from jobs.contracts import WorkerState

logger = logging.getLogger(__name__)

STATE_REFRESH_S = 5.0
STATE_TTL_S = 15


def outage_retry(seconds: float, cap_s: float = 1.0) -> Retry:
    """A redis-py retry policy that keeps retrying a failed connection for about `seconds`.

    A worker's Redis calls (rq's bookkeeping, replies, video progress) then pause through a Redis restart
    instead of failing: work in hand is finished and recorded once Redis is back, and the worker never exits
    because of a short outage. The API does not retry: it answers 503 at once while Redis is down.
    """
    backoff = ExponentialBackoff(cap=cap_s, base=0.05)
    warm_up = 5  # 0.05 + 0.1 + 0.2 + 0.4 + 0.8 s before the cap is reached
    return Retry(backoff, retries=warm_up + max(1, math.ceil((seconds - 1.55) / cap_s)))


class StatePublisher:
    """Keeps `<prefix>:workers:<name>` alive (TTL) with this worker's `WorkerState`, from a daemon thread."""

    def __init__(self, connection: redis.Redis, key: str, state: WorkerState) -> None:
        self.connection = connection
        self.key = key
        self.state = state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-state", daemon=True)

    def start(self) -> None:
        self.publish()
        self._thread.start()

    def update(self, **changes: Any) -> None:
        self.state = self.state.model_copy(update=changes)
        self.publish()

    def publish(self) -> None:
        self.state.updated_at = time.time()
        try:
            self.connection.set(self.key, self.state.model_dump_json(), ex=STATE_TTL_S)
        except redis.RedisError as exc:
            logger.warning("could not publish the worker state: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        with contextlib.suppress(redis.RedisError):
            self.connection.delete(self.key)

    def _run(self) -> None:
        while not self._stop.wait(STATE_REFRESH_S):
            self.publish()
