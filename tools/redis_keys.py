"""Redis housekeeping for stacks that share a Redis: delete everything one queue prefix left behind.

Used by `tools.launch.local_stack` (a stack started on a given Redis forgets its prefix on exit), so by the
benchmarks, `deploy/live_stack.py` and the tests. What rq keeps is found by `jobs.rqueue.forget_prefix`, the one
module that knows rq's key names.
"""

from __future__ import annotations

import redis

from jobs import rqueue


def forget_prefix(redis_url: str, prefix: str) -> None:
    """Delete what a stack with queue prefix `prefix` left in a shared Redis, and nothing of other prefixes."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        rqueue.forget_prefix(client, prefix)
    finally:
        client.close()
