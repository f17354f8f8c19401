"""Live streams in Redis: records, leases, events and snapshots (synchronous redis-py; the API runs it in threads).

    <prefix>:streams                  sorted set of stream ids by creation time
    <prefix>:stream:<id>              hash: spec (url and parameters), status, worker, error, created_at,
                                      started_at, stats (JSON), tracker (JSON, so a worker taking over keeps ids)
    <prefix>:stream:<id>:lease        the holding worker's name, with a TTL the worker renews (heartbeat)
    <prefix>:stream:<id>:events       capped Redis stream (XADD ... MAXLEN ~) of fields `type` and `data` (JSON)
    <prefix>:stream:<id>:snapshot     the latest processed frame, annotated, as JPEG (short TTL)

A stream stays on until it is stopped (DELETE) or fails; then its keys expire after MASENET_STREAM_TTL_S. Status
changes are Lua scripts, so a worker's report can never bring a stopped stream back.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from jobs.stream_urls import redact
from jobs.streams import (
    EventType,
    StreamParams,
    StreamRequest,
    StreamState,
    StreamStats,
    StreamStatus,
    validate_stream_id,
)

FINAL = tuple(status.value for status in StreamStatus if status.final)

# KEYS: record, lease, events, snapshot; ARGV: status, error, ttl_s, now. Refused once the stream is final.
SET_STATUS = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current or current == 'stopped' or current == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[2]) else redis.call('HDEL', KEYS[1], 'error') end
if ARGV[1] == 'running' and redis.call('HEXISTS', KEYS[1], 'started_at') == 0 then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[4])
end
if ARGV[1] == 'stopped' or ARGV[1] == 'failed' then
  redis.call('HSET', KEYS[1], 'ended_at', ARGV[4])
  for _, i in ipairs({1, 3, 4}) do
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], tonumber(ARGV[3])) end
  end
end
return 1
"""

# KEYS: record, lease; ARGV: worker, lease_ms. Takes an unheld, live stream.
CLAIM = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current or current == 'stopped' or current == 'failed' then return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then return 0 end
redis.call('HSET', KEYS[1], 'worker', ARGV[1])
return 1
"""

# KEYS: record, lease; ARGV: worker, lease_ms. The stream's status while this worker holds it, or false.
RENEW = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return false end
local current = redis.call('HGET', KEYS[1], 'status')
if not current or current == 'stopped' or current == 'failed' then
  redis.call('DEL', KEYS[2])
  return current or 'gone'
end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
return current
"""

# KEYS: record, lease; ARGV: worker, stats, tracker. Only the holder reports, only while the stream lives.
REPORT = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local current = redis.call('HGET', KEYS[1], 'status')
if not current or current == 'stopped' or current == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'stats', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'tracker', ARGV[3]) end
return 1
"""

# KEYS: record, events; ARGV: maxlen, then type and data of each event. Nothing once the stream has ended.
PUBLISH = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current or current == 'stopped' or current == 'failed' then return 0 end
for i = 2, #ARGV, 2 do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'type', ARGV[i], 'data', ARGV[i + 1])
end
return 1
"""

# KEYS: lease, record; ARGV: worker. Hands the stream back (another worker may take it at once).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if redis.call('HGET', KEYS[2], 'worker') == ARGV[1] then redis.call('HDEL', KEYS[2], 'worker') end
  return 1
end
return 0
"""


@dataclass(frozen=True)
class StreamRecord:
    """A stream as stored: the raw URL (with its credentials, for the worker only) and everything else."""

    stream_id: str
    url: str
    params: StreamParams
    status: StreamStatus
    worker: str | None
    error: str | None
    created_at: float
    started_at: float | None
    stats: StreamStats
    tracker: dict[str, Any] | None

    def public(self) -> StreamState:
        return StreamState(
            **self.stats.model_dump(),
            stream_id=self.stream_id,
            url=redact(self.url),
            status=self.status,
            worker=self.worker,
            error=self.error,
            created_at=self.created_at,
            started_at=self.started_at,
            params=self.params,
        )


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class StreamStore:
    """The Redis side of live streams for one key prefix."""

    def __init__(self, connection: Any, prefix: str, ttl_s: int, events_max: int = 1000) -> None:
        self.connection = connection
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.events_max = events_max
        self._set_status = connection.register_script(SET_STATUS)
        self._claim = connection.register_script(CLAIM)
        self._renew = connection.register_script(RENEW)
        self._report = connection.register_script(REPORT)
        self._release = connection.register_script(RELEASE)
        self._publish = connection.register_script(PUBLISH)

    # keys
    @property
    def index_key(self) -> str:
        return f"{self.prefix}:streams"

    def key(self, stream_id: str) -> str:
        return f"{self.prefix}:stream:{validate_stream_id(stream_id)}"

    def lease_key(self, stream_id: str) -> str:
        return f"{self.key(stream_id)}:lease"

    def events_key(self, stream_id: str) -> str:
        return f"{self.key(stream_id)}:events"

    def snapshot_key(self, stream_id: str) -> str:
        return f"{self.key(stream_id)}:snapshot"

    def _keys(self, stream_id: str) -> list[str]:
        key = self.key(stream_id)
        return [key, f"{key}:lease", f"{key}:events", f"{key}:snapshot"]

    # API side
    def create(self, stream_id: str, request: StreamRequest, now: float | None = None) -> None:
        now = time.time() if now is None else now
        spec = {"url": request.url, "params": request.params().model_dump(mode="json")}
        with self.connection.pipeline(transaction=True) as pipeline:
            pipeline.hset(
                self.key(stream_id),
                mapping={"spec": json.dumps(spec), "status": StreamStatus.STARTING.value, "created_at": repr(now)},
            )
            pipeline.zadd(self.index_key, {stream_id: now})
            pipeline.execute()

    def stop(self, stream_id: str) -> bool:
        """Mark the stream stopped (its holder lets go within a heartbeat); False if it had already ended."""
        return self.set_status(stream_id, StreamStatus.STOPPED)

    def read(self, stream_id: str) -> StreamRecord | None:
        raw = self.connection.hgetall(self.key(stream_id))
        return self._record(stream_id, raw) if raw else None

    def records(self) -> list[StreamRecord]:
        """Every stream still kept, oldest first; ids whose record expired leave the index."""
        ids = [_text(value) for value in self.connection.zrange(self.index_key, 0, -1)]
        with self.connection.pipeline(transaction=False) as pipeline:
            for stream_id in ids:
                pipeline.hgetall(self.key(stream_id))
            raws = pipeline.execute()
        records, gone = [], []
        for stream_id, raw in zip(ids, raws, strict=True):
            if raw:
                records.append(self._record(stream_id, raw))
            else:
                gone.append(stream_id)
        if gone:
            self.connection.zrem(self.index_key, *gone)
        return records

    def live_count(self) -> int:
        return sum(not record.status.final for record in self.records())

    # worker side
    def claimable(self) -> list[str]:
        """Live streams that no worker holds, oldest first."""
        live = [record.stream_id for record in self.records() if not record.status.final]
        with self.connection.pipeline(transaction=False) as pipeline:
            for stream_id in live:
                pipeline.exists(self.lease_key(stream_id))
            held = pipeline.execute()
        return [stream_id for stream_id, taken in zip(live, held, strict=True) if not taken]

    def claim(self, stream_id: str, worker: str, lease_ms: int) -> bool:
        return bool(self._claim(keys=[self.key(stream_id), self.lease_key(stream_id)], args=[worker, lease_ms]))

    def renew(self, stream_ids: list[str], worker: str, lease_ms: int) -> dict[str, str | None]:
        """Per stream: its status while `worker` still holds it, or None when the lease was lost."""
        with self.connection.pipeline(transaction=False) as pipeline:
            for stream_id in stream_ids:
                keys = [self.key(stream_id), self.lease_key(stream_id)]
                self._renew(keys=keys, args=[worker, lease_ms], client=pipeline)
            answers = pipeline.execute()
        return {stream_id: _text(answer) for stream_id, answer in zip(stream_ids, answers, strict=True)}

    def release(self, stream_id: str, worker: str) -> bool:
        return bool(self._release(keys=[self.lease_key(stream_id), self.key(stream_id)], args=[worker]))

    def set_status(self, stream_id: str, status: StreamStatus, error: str | None = None) -> bool:
        args = [status.value, error or "", self.ttl_s, repr(time.time())]
        return bool(self._set_status(keys=self._keys(stream_id), args=args))

    def report(self, stream_id: str, worker: str, stats: StreamStats, tracker: dict[str, Any] | None) -> bool:
        args = [worker, stats.model_dump_json(), json.dumps(tracker) if tracker is not None else ""]
        return bool(self._report(keys=[self.key(stream_id), self.lease_key(stream_id)], args=args))

    def publish(self, stream_id: str, events: list[tuple[EventType, str]], ended_too: bool = False) -> bool:
        """Append events (type, JSON data) to the stream's capped Redis stream; a worker's events are dropped once
        the stream has ended (a frame in flight at DELETE), the API's own `ended_too` (the final status) are not."""
        if not events:
            return True
        key = self.events_key(stream_id)
        if not ended_too:
            args: list[Any] = [self.events_max]
            for kind, data in events:
                args += [kind.value, data]
            return bool(self._publish(keys=[self.key(stream_id), key], args=args))
        with self.connection.pipeline(transaction=False) as pipeline:
            for kind, data in events:
                pipeline.xadd(key, {"type": kind.value, "data": data}, maxlen=self.events_max, approximate=True)
            pipeline.execute()
        return True

    def put_snapshot(self, stream_id: str, jpeg: bytes, ttl_s: int = 60) -> None:
        self.connection.set(self.snapshot_key(stream_id), jpeg, ex=ttl_s)

    def snapshot(self, stream_id: str) -> bytes | None:
        return self.connection.get(self.snapshot_key(stream_id))

    # parsing
    def _record(self, stream_id: str, raw: dict[Any, Any]) -> StreamRecord:
        fields = {_text(key): _text(value) for key, value in raw.items()}
        spec = json.loads(fields.get("spec") or "{}")
        started = fields.get("started_at")
        tracker = fields.get("tracker")
        return StreamRecord(
            stream_id=stream_id,
            url=str(spec.get("url", "")),
            params=StreamParams.model_validate(spec.get("params") or {}),
            status=StreamStatus(fields.get("status") or StreamStatus.STARTING.value),
            worker=fields.get("worker") or None,
            error=fields.get("error") or None,
            created_at=float(fields.get("created_at") or 0.0),
            started_at=float(started) if started else None,
            stats=StreamStats.model_validate_json(fields["stats"]) if fields.get("stats") else StreamStats(),
            tracker=json.loads(tracker) if tracker else None,
        )
