"""Redis housekeeping for stacks that share a Redis: delete everything one queue prefix left behind.

Used by `tools.launch.local_stack` (a stack started on a given Redis forgets its prefix on exit), so by the
benchmarks, `deploy/live_stack.py` and the tests. rq names a job's keys after the job id alone, so they are
found through the job's origin queue, not by the prefix.
"""

from __future__ import annotations

import redis

SCAN_COUNT = 500


def forget_prefix(redis_url: str, prefix: str) -> None:
    """Delete what a stack with queue prefix `prefix` left in a shared Redis, and nothing of other prefixes.

    That is the prefix's own keys (`<prefix>:*`), rq's keys named after its queues or workers (`rq:*<prefix>*`),
    its jobs with every key named after their ids (`rq:job:<id>`, `rq:job:<id>:dependents`, rq's
    `rq:job::<id>:dependencies`, `rq:results:<id>`, `rq:executions:<id>`, ...: their names do not carry the
    prefix), the results streams of its workers, and its entries in rq's global sets (`rq:queues`, `rq:workers`).
    """
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        doomed = {key for pattern in (f"{prefix}:*", f"rq:*{prefix}*") for key in scan(client, pattern)}
        ids = set()
        for key in scan(client, "rq:job:*"):
            job_id = key.removeprefix("rq:job:")
            if ":" not in job_id and (client.hget(key, "origin") or "").startswith(f"{prefix}:"):
                ids.add(job_id)
        if ids:
            doomed |= {key for key in scan(client, "rq:*") if ids & set(key.split(":"))}
        state_keys = f"{prefix}:workers:"
        names = {key.removeprefix(state_keys) for key in doomed if key.startswith(state_keys)}
        for key in scan(client, "rq:worker:*"):
            if client.type(key) == "hash" and f"{prefix}:" in (client.hget(key, "queues") or ""):
                names.add(key.removeprefix("rq:worker:"))
        doomed |= {f"rq:worker:{name}" for name in names}
        for key in scan(client, "rq:results:*"):
            latest = client.xrevrange(key, count=1) if client.type(key) == "stream" else []
            if latest and latest[0][1].get("worker_name") in names:
                doomed.add(key)
        workers = {member for member in client.smembers("rq:workers") if prefix in member}
        workers |= {f"rq:worker:{name}" for name in names}
        queues = [member for member in client.smembers("rq:queues") if prefix in member]
        with client.pipeline() as pipeline:
            if workers:
                pipeline.srem("rq:workers", *workers)
            if queues:
                pipeline.srem("rq:queues", *queues)
            ordered = sorted(doomed)
            for start in range(0, len(ordered), SCAN_COUNT):
                pipeline.delete(*ordered[start : start + SCAN_COUNT])
            pipeline.execute()
    finally:
        client.close()


def scan(client: redis.Redis, pattern: str) -> list[str]:
    return list(client.scan_iter(match=pattern, count=SCAN_COUNT))
