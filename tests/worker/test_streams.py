"""The stream hub's per-frame step: tracking, frame and track events into the real Redis, failures that end a stream."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from jobs.contracts import Detection, FailureKind, ImageJobResult, JobFailure
from jobs.settings import Settings
from jobs.stream_store import StreamStore
from jobs.streams import StreamRequest, StreamStatus, new_stream_id
from model.tracking import Tracker
from worker.metrics import WorkerMetrics
from worker.runtime import Outcome
from worker.stream_source import CapturedFrame, StreamSource
from worker.streams import HeldStream, StreamHub


@pytest.fixture
def hub(redis_connection: redis.Redis, prefix: str) -> Iterator[StreamHub]:
    store = StreamStore(redis_connection, prefix, ttl_s=60)
    settings = Settings(queue_prefix=prefix, stream_allow="127.0.0.1")
    made = StreamHub(store, inference=None, worker_name="w1", settings=settings, metrics=WorkerMetrics())
    yield made
    made.close()  # its snapshot thread finishes before the database is flushed


def held(hub: StreamHub, track: bool = True) -> HeldStream:
    stream_id = new_stream_id()
    hub.store.create(stream_id, StreamRequest(url="rtsp://127.0.0.1/x", track=track))
    hub.store.claim(stream_id, "w1", 5000)
    record = hub.store.read(stream_id)
    source = StreamSource(stream_id, record.url, 5.0, hub._allow, queue.Queue(), lambda *_: None)  # never started
    stream = HeldStream(record, source, params=None, tracker=Tracker() if track else None, base=record.stats)
    hub._held[stream_id] = stream
    return stream


def outcome(*boxes: list[float], class_id: int = 2) -> Outcome:
    detections = [Detection(box=box, score=0.9, class_id=class_id, class_name="boat") for box in boxes]
    result = ImageJobResult(
        filename="frame", width=64, height=64, detections=detections, queue_ms=0, inference_ms=1, batch_size=1
    )
    return Outcome(result=result)


def frame(index: int) -> CapturedFrame:
    return CapturedFrame(np.zeros((64, 64, 3), np.uint8), index=index, time_s=index / 5, captured_at=1e9 + index)


def events(connection: redis.Redis, hub: StreamHub, stream: HeldStream) -> list[tuple[str, dict]]:
    entries = connection.xrange(hub.store.events_key(stream.stream_id))
    return [(fields[b"type"].decode(), json.loads(fields[b"data"])) for _, fields in entries]


def test_a_target_seen_then_lost_gives_frame_and_track_events(hub: StreamHub, redis_connection: redis.Redis) -> None:
    stream = held(hub)
    for index in range(6):  # a boat moving right, then gone
        hub._deliver(stream, frame(index), outcome([10.0 + 2 * index, 20, 14.0 + 2 * index, 24]))
    for index in range(6, 14):
        hub._deliver(stream, frame(index), outcome())
    seen = events(redis_connection, hub, stream)
    frames = [data for kind, data in seen if kind == "frame"]
    assert [data["frame_index"] for data in frames] == list(range(14))
    ids = [detection["track_id"] for data in frames for detection in data["detections"]]
    assert ids == [None, None, 1, 1, 1, 1]  # confirmed at its third sighting
    started = [data for kind, data in seen if kind == "track_started"]
    ended = [data for kind, data in seen if kind == "track_ended"]
    assert [(data["track_id"], data["class_id"], data["frame_index"]) for data in started] == [(1, 2, 2)]
    assert [(data["track_id"], data["class_id"]) for data in ended] == [(1, 2)]
    assert 6 < ended[0]["frame_index"] <= 12
    assert stream.processed == 14 and len(stream.latencies) == 14
    assert stream.tracker_state is not None and Tracker.from_state(stream.tracker_state).next_track_id == 2


def test_without_tracking_detections_have_no_track_ids(hub: StreamHub, redis_connection: redis.Redis) -> None:
    stream = held(hub, track=False)
    for index in range(4):
        hub._deliver(stream, frame(index), outcome([10.0, 20, 14, 24]))
    seen = events(redis_connection, hub, stream)
    assert {kind for kind, _ in seen} == {"frame"}
    assert all(detection["track_id"] is None for _, data in seen for detection in data["detections"])


def test_a_frame_over_the_budget_fails_the_stream(hub: StreamHub, redis_connection: redis.Redis) -> None:
    stream = held(hub)
    detail = "frame 0 (4000x3000) ... above the limit of 12000000 (MASENET_MAX_INPUT_PIXELS)"
    hub._deliver(stream, frame(0), Outcome(failure=JobFailure(kind=FailureKind.MEDIA, detail=detail)))
    record = hub.store.read(stream.stream_id)
    assert record.status == StreamStatus.FAILED and record.error == detail
    assert stream.source.stopped
    assert events(redis_connection, hub, stream)[-1] == ("status", {"status": "failed", "error": detail})


def test_the_newest_frame_waits_in_its_bucket_and_a_failing_pass_never_raises(hub: StreamHub) -> None:
    stream = held(hub)

    class Broken:
        def views(self, task: object) -> int:
            return 1

        def bucket(self, params: object, width: int, height: int) -> tuple:
            return (height, width)

        def cost(self, params: object, width: int, height: int) -> int:
            return width * height

        def upload(self, image: np.ndarray) -> object:
            raise RuntimeError("device lost")

    hub.inference = Broken()
    assert hub.waiting(now=0.0) == []
    stream.source._slot = frame(0)
    waiting = hub.waiting(now=0.0)
    assert [(item.work_class.value, item.bucket, item.since, item.ref) for item in waiting] == [
        ("stream", (64, 64), frame(0).captured_at, stream)
    ]
    taken = hub.take(waiting)
    assert hub.waiting(now=0.0) == []  # the frame was taken
    assert hub.run(taken) == 0  # logged, not raised: the worker's loop goes on
