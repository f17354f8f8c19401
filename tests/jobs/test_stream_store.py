"""The live streams' Redis side against the real Redis: records, leases, status rules, events, expiry."""

from __future__ import annotations

import json

import pytest
import redis

from jobs.stream_store import StreamStore
from jobs.streams import EventType, StreamRequest, StreamStats, StreamStatus, new_stream_id

TTL_S = 120


@pytest.fixture
def store(redis_connection: redis.Redis, prefix: str) -> StreamStore:
    return StreamStore(redis_connection, prefix, TTL_S, events_max=20)


def start(store: StreamStore, url: str = "rtsp://user:pw@10.0.0.9/live", **params: object) -> str:
    stream_id = new_stream_id()
    store.create(stream_id, StreamRequest(url=url, **params))
    return stream_id


def test_a_record_keeps_the_url_for_workers_and_shows_it_redacted(store: StreamStore) -> None:
    stream_id = start(store, fps=2.5, track=False, conf=0.4)
    record = store.read(stream_id)
    assert record is not None and record.url == "rtsp://user:pw@10.0.0.9/live"
    public = record.public()
    assert public.url == "rtsp://***@10.0.0.9/live"
    assert public.status == StreamStatus.STARTING and public.worker is None and public.started_at is None
    assert (public.params.fps, public.params.track, public.params.conf) == (2.5, False, 0.4)
    assert "pw" not in public.model_dump_json()


def test_one_worker_holds_a_stream_until_its_lease_lapses(store: StreamStore, redis_connection: redis.Redis) -> None:
    stream_id = start(store)
    assert store.claimable() == [stream_id]
    assert store.claim(stream_id, "w1", 5000)
    assert not store.claim(stream_id, "w2", 5000)
    assert store.claimable() == []
    assert store.renew([stream_id], "w1", 5000) == {stream_id: "starting"}
    assert store.renew([stream_id], "w2", 5000) == {stream_id: None}
    redis_connection.delete(store.lease_key(stream_id))  # the holder died: its lease expired
    assert store.claimable() == [stream_id]
    assert store.claim(stream_id, "w2", 5000)
    assert store.read(stream_id).worker == "w2"
    assert store.release(stream_id, "w2") and store.claimable() == [stream_id]


def test_only_the_holder_reports_and_a_stopped_stream_stays_stopped(store: StreamStore) -> None:
    stream_id = start(store)
    store.claim(stream_id, "w1", 5000)
    assert store.set_status(stream_id, StreamStatus.RUNNING)
    assert store.report(stream_id, "w1", StreamStats(frames_read=7, frames_processed=3), {"version": 1})
    assert not store.report(stream_id, "w2", StreamStats(frames_read=99), None)
    record = store.read(stream_id)
    assert record.stats.frames_read == 7 and record.tracker == {"version": 1} and record.started_at is not None
    assert store.stop(stream_id)
    assert not store.set_status(stream_id, StreamStatus.RUNNING)  # a late report cannot revive it
    assert not store.report(stream_id, "w1", StreamStats(frames_read=8), None)
    assert not store.stop(stream_id)
    assert store.renew([stream_id], "w1", 5000) == {stream_id: "stopped"}
    assert store.read(stream_id).status == StreamStatus.STOPPED
    assert store.claimable() == []


def test_an_ended_stream_expires_with_all_its_keys(store: StreamStore, redis_connection: redis.Redis) -> None:
    stream_id = start(store)
    store.claim(stream_id, "w1", 5000)
    store.publish(stream_id, [(EventType.FRAME, json.dumps({"frame_index": 0}))])
    store.put_snapshot(stream_id, b"jpeg", ttl_s=3600)
    assert redis_connection.ttl(store.key(stream_id)) == -1  # a live stream does not expire
    store.set_status(stream_id, StreamStatus.FAILED, "the camera refused the credentials")
    for key in (store.key(stream_id), store.events_key(stream_id), store.snapshot_key(stream_id)):
        assert 0 < redis_connection.ttl(key) <= TTL_S
    assert store.read(stream_id).error == "the camera refused the credentials"
    redis_connection.delete(store.key(stream_id))  # what expiry does
    assert store.records() == [] and redis_connection.zcard(store.index_key) == 0


def test_events_are_capped(store: StreamStore, redis_connection: redis.Redis) -> None:
    stream_id = start(store)
    for index in range(200):
        store.publish(stream_id, [(EventType.FRAME, json.dumps({"frame_index": index}))])
    kept = redis_connection.xlen(store.events_key(stream_id))
    assert 20 <= kept < 200
    newest = redis_connection.xrevrange(store.events_key(stream_id), count=1)[0][1]
    assert json.loads(newest[b"data"]) == {"frame_index": 199} and newest[b"type"] == b"frame"


def test_live_count_ignores_ended_streams(store: StreamStore) -> None:
    first, second = start(store), start(store)
    store.stop(first)
    assert store.live_count() == 1
    assert [record.stream_id for record in store.records()] == [first, second]
