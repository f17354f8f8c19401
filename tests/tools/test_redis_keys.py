"""`forget_prefix`: what a stack left under its queue prefix in a shared Redis goes, other prefixes' keys stay."""

from __future__ import annotations

import uuid

import redis

from tests.service.helpers import REDIS_URL
from tools.redis_keys import forget_prefix


def test_forget_prefix_deletes_only_the_prefix_keys(redis_client: redis.Redis) -> None:
    prefix, other = f"bench-load-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    mine, theirs = uuid.uuid4().hex, uuid.uuid4().hex
    worker = f"{prefix}-worker-0"
    redis_client.set(f"{prefix}:data:{mine}", "x")
    redis_client.set(f"{prefix}:workers:{worker}", "{}")
    redis_client.rpush(f"rq:queue:{prefix}:images", mine)
    redis_client.hset(f"rq:job:{mine}", mapping={"origin": f"{prefix}:images"})
    redis_client.set(f"rq:results:{mine}", "x")
    redis_client.sadd(f"rq:job:{mine}:dependents", "y")
    redis_client.sadd(f"rq:job::{mine}:dependencies", "y")
    redis_client.hset(f"rq:worker:{worker}", mapping={"queues": f"{prefix}:images,{prefix}:video"})
    redis_client.hset(f"rq:job:{theirs}", mapping={"origin": f"{other}:images"})
    redis_client.sadd(f"rq:job:{theirs}:dependents", "z")
    redis_client.set(f"{other}:data:{theirs}", "x")
    redis_client.sadd("rq:queues", f"rq:queue:{prefix}:images", f"rq:queue:{other}:images")
    redis_client.sadd("rq:workers", f"rq:worker:{worker}", f"rq:worker:{other}-0")

    forget_prefix(REDIS_URL, prefix)

    assert not list(redis_client.scan_iter(match=f"*{prefix}*"))
    assert not list(redis_client.scan_iter(match=f"*{mine}*")), "a key of the prefix's job was left"
    assert redis_client.hget(f"rq:job:{theirs}", "origin") == f"{other}:images".encode()
    assert redis_client.exists(f"rq:job:{theirs}:dependents", f"{other}:data:{theirs}") == 2
    assert redis_client.smembers("rq:queues") >= {f"rq:queue:{other}:images".encode()}
    assert f"rq:queue:{prefix}:images".encode() not in redis_client.smembers("rq:queues")
    assert f"rq:worker:{worker}".encode() not in redis_client.smembers("rq:workers")
    assert f"rq:worker:{other}-0".encode() in redis_client.smembers("rq:workers")
