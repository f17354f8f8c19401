"""A worker's live streams: leases, camera readers, and batches of their frames through the inference step.

    heartbeat thread   every HEARTBEAT_S: renew the leases of the held streams (a stream stopped by DELETE or
                       lost to another worker is let go), report each stream's counters, and claim one unheld
                       stream if this worker has room; a worker holding k streams waits k * CLAIM_STEP_S before
                       claiming, so streams spread over the workers
    reader threads     one `StreamSource` per stream: decode, cap the frame rate, newest frame wins, and ring the
                       doorbell that wakes the worker's scheduling loop
    loop thread        `waiting` offers each stream's newest frame (in its bucket) to the loop (worker/loop.py),
                       which `take`s the frames it chose
    lane thread        `run` runs them through `InferenceRuntime.run` as one pass, then per
                       stream: track, publish the frame event (and track_started / track_ended) to the capped
                       Redis stream, and now and then an annotated JPEG snapshot (encoded in a side thread)

If a worker dies its leases expire (LEASE_MS) and another worker takes its streams over, continuing their
counters and track ids from the state the last holder reported.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jobs.contracts import DetectParams, FailureKind, InferenceParams
from jobs.settings import Settings
from jobs.stream_store import StreamRecord, StreamStore
from jobs.stream_urls import AllowList
from jobs.streams import (
    EventType,
    FrameEvent,
    Latency,
    StatusEvent,
    StreamStats,
    StreamStatus,
    TrackEvent,
)
from jobs.video import TrackedDetection
from model.tracking import Tracker
from worker.batching import pair_outputs
from worker.metrics import WorkerMetrics
from worker.render import annotate_frame
from worker.runtime import FrameTask, Outcome
from worker.schedule import Waiting, WorkClass
from worker.stream_source import CapturedFrame, StreamSource

logger = logging.getLogger(__name__)

HEARTBEAT_S = 0.5
LEASE_MS = 3000  # a dead worker's streams are taken over this long after its last heartbeat
CLAIM_STEP_S = 0.5
SNAPSHOT_EVERY_S = 0.5
SNAPSHOT_QUALITY = 85
LATENCY_WINDOW = 200  # frames over which p50 / p95 latency is reported


@dataclass
class HeldStream:
    """A stream this worker holds: its reader, tracker and counters (base: those of earlier holders)."""

    record: StreamRecord
    source: StreamSource
    params: DetectParams
    tracker: Tracker | None
    base: StreamStats
    processed: int = 0
    confirmed: dict[int, int] = field(default_factory=dict)  # track id -> class id of the confirmed tracks
    tracker_state: dict[str, Any] | None = None
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    last_snapshot: float = 0.0
    last_beat: tuple[float, int, int] = (0.0, 0, 0)  # (monotonic time, frames read, frames processed)
    fps_in: float = 0.0
    fps_processed: float = 0.0
    counted: tuple[int, int, int] = (0, 0, 0)  # read, dropped, reconnects already added to the metrics

    @property
    def stream_id(self) -> str:
        return self.record.stream_id

    def stats(self) -> StreamStats:
        ordered = sorted(self.latencies)
        latency = Latency()
        if ordered:
            latency = Latency(
                p50=round(1000.0 * ordered[len(ordered) // 2], 1),
                p95=round(1000.0 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
            )
        source = self.source
        return StreamStats(
            frames_read=self.base.frames_read + source.frames_read,
            frames_processed=self.base.frames_processed + self.processed,
            frames_dropped=self.base.frames_dropped + source.frames_dropped,
            fps_in=round(self.fps_in, 2),
            fps_processed=round(self.fps_processed, 2),
            latency_ms=latency,
            reconnects=self.base.reconnects + source.reconnects,
            width=source.width or self.base.width,
            height=source.height or self.base.height,
        )


class Doorbell:
    """What a stream's reader rings when it holds a new frame: it wakes the worker's scheduling loop."""

    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake

    def put(self, _source: StreamSource) -> None:
        self.wake.set()


class StreamHub:
    """Holds up to `max_streams` streams for one worker; `waiting` and `run` are called by the scheduling loop."""

    work_class = WorkClass.STREAM

    def __init__(
        self,
        store: StreamStore,
        inference: Any,  # worker.runtime.InferenceRuntime
        worker_name: str,
        settings: Settings,
        metrics: WorkerMetrics,
        wake: threading.Event | None = None,
    ) -> None:
        self.store = store
        self.inference = inference
        self.worker_name = worker_name
        self.settings = settings
        self.metrics = metrics
        self.max_streams = settings.max_streams_per_worker
        self.doorbell = Doorbell(wake or threading.Event())
        self._held: dict[str, HeldStream] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._first_seen: dict[str, float] = {}
        self._allow = AllowList.parse(settings.stream_allow)
        self._snapshots = ThreadPoolExecutor(1, thread_name_prefix="snapshot")
        self._snapshot_busy: Future[None] | None = None
        self._thread = threading.Thread(target=self._heartbeat, name="stream-heartbeat", daemon=True)

    def start(self) -> StreamHub:
        self._thread.start()
        return self

    def close(self) -> None:
        """Let every stream go at once (another worker takes them over) and stop the threads."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for stream in held:
            stream.source.stop()
            try:
                self.store.release(stream.stream_id, self.worker_name)
            except Exception as exc:
                logger.warning("stream %s: cannot hand back the lease: %s", stream.stream_id, exc)
        self._snapshots.shutdown(wait=True, cancel_futures=True)
        self.metrics.streams_held.set(0)

    @property
    def active(self) -> bool:
        return bool(self._held)

    busy = active

    # the scheduling loop's side (its thread)
    def waiting(self, now: float) -> list[Waiting]:
        """The newest frame of every held stream that has one, each in its bucket."""
        waiting = []
        for stream in list(self._held.values()):
            captured = stream.source.peek()
            if captured is None:
                continue
            height, width = captured.image.shape[:2]
            bucket = self.inference.bucket(stream.params, width, height)
            cost = self.inference.cost(stream.params, width, height)
            views = self.inference.views(stream)
            waiting.append(Waiting(WorkClass.STREAM, bucket, captured.captured_at, views, cost, ref=stream))
        return waiting

    def take(self, items: Sequence[Waiting]) -> list[tuple[HeldStream, CapturedFrame]]:
        """The chosen streams' newest frames, taken out of their slots."""
        taken = []
        for item in items:
            stream: HeldStream = item.ref
            captured = stream.source.take()
            if captured is not None:
                taken.append((stream, captured))
        return taken

    def run(self, taken: list[tuple[HeldStream, CapturedFrame]]) -> int:
        """Run the taken frames as one pass and publish their events; the frames run.

        Never raises: a failure here would end the worker's loop, and with it every job and stream it serves.
        """
        try:
            return self._run(taken)
        except Exception:
            logger.exception("worker %s: a pass of stream frames failed", self.worker_name)
            return 0

    def _run(self, taken: list[tuple[HeldStream, CapturedFrame]]) -> int:
        work: list[tuple[HeldStream, CapturedFrame, FrameTask]] = []
        for stream, captured in taken:
            if self._held.get(stream.stream_id) is not stream:
                continue
            task = FrameTask(
                index=captured.index,
                time_s=captured.time_s,
                params=stream.params,
                image=captured.image,
                picked_at=time.time(),
                enqueued_at=captured.captured_at,
            )
            task.decoded.set_result(self.inference.upload(captured.image))
            work.append((stream, captured, task))
        if not work:
            return 0
        outcomes = self.inference.run([task for _, _, task in work])
        for (stream, captured, _), outcome in pair_outputs(work, outcomes, "run"):
            self._deliver(stream, captured, outcome)
        self.metrics.stream_frames.labels(outcome="processed").inc(len(work))
        return len(work)

    def _deliver(self, stream: HeldStream, captured: CapturedFrame, outcome: Outcome) -> None:
        if outcome.failure is not None or outcome.result is None:
            failure = outcome.failure
            if failure is not None and failure.kind == FailureKind.MEDIA:
                self._set_status(stream.stream_id, StreamStatus.FAILED, failure.detail)
                stream.source.stop()
            else:
                logger.warning("stream %s frame %d failed: %s", stream.stream_id, captured.index, failure)
            return
        found = [detection.model_dump() for detection in outcome.result.detections]
        events: list[tuple[EventType, str]] = []
        ids: list[int | None] = [None] * len(found)
        if stream.tracker is not None:
            owners = stream.tracker.update(found)
            ids = [track.track_id for track in owners]
            alive = {track.track_id for track in stream.tracker.tracks if track.track_id is not None}
            for detection, track_id in zip(found, ids, strict=True):
                if track_id is not None and track_id not in stream.confirmed:
                    started = TrackEvent(
                        track_id=track_id,
                        class_id=int(detection["class_id"]),
                        frame_index=captured.index,
                        time_s=captured.time_s,
                        box=detection["box"],
                    )
                    events.append((EventType.TRACK_STARTED, started.model_dump_json()))
                    stream.confirmed[track_id] = started.class_id
            for track_id in sorted(set(stream.confirmed) - alive):
                class_id = stream.confirmed.pop(track_id)
                ended = TrackEvent(
                    track_id=track_id, class_id=class_id, frame_index=captured.index, time_s=captured.time_s
                )
                events.append((EventType.TRACK_ENDED, ended.model_dump_json()))
            stream.tracker_state = stream.tracker.state_dict()
        detections = [TrackedDetection(**item, track_id=track_id) for item, track_id in zip(found, ids, strict=True)]
        frame = FrameEvent(
            frame_index=captured.index, time_s=captured.time_s, captured_at=captured.captured_at, detections=detections
        )
        events.insert(0, (EventType.FRAME, frame.model_dump_json()))
        try:
            self.store.publish(stream.stream_id, events)
        except Exception as exc:
            logger.warning("stream %s: cannot publish events: %s", stream.stream_id, exc)
            return
        latency = max(0.0, time.time() - captured.captured_at)
        stream.latencies.append(latency)
        stream.processed += 1
        self.metrics.stream_latency.observe(latency)
        self._maybe_snapshot(stream, captured.image, detections)

    def _maybe_snapshot(self, stream: HeldStream, image: np.ndarray, detections: list[TrackedDetection]) -> None:
        now = time.monotonic()
        busy = self._snapshot_busy is not None and not self._snapshot_busy.done()
        if busy or now - stream.last_snapshot < SNAPSHOT_EVERY_S:
            return
        stream.last_snapshot = now
        self._snapshot_busy = self._snapshots.submit(self._write_snapshot, stream.stream_id, image, detections)

    def _write_snapshot(self, stream_id: str, image: np.ndarray, detections: list[TrackedDetection]) -> None:
        from PIL import Image

        try:
            buffer = io.BytesIO()
            Image.fromarray(annotate_frame(image, detections)).save(buffer, format="JPEG", quality=SNAPSHOT_QUALITY)
            self.store.put_snapshot(stream_id, buffer.getvalue())
        except Exception as exc:
            logger.warning("stream %s: cannot store the snapshot: %s", stream_id, exc)

    # heartbeat thread
    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._beat()
            except Exception as exc:
                logger.warning("worker %s: stream heartbeat failed: %s", self.worker_name, exc)

    def _beat(self) -> None:
        held = list(self._held)
        if held:
            for stream_id, status in self.store.renew(held, self.worker_name, LEASE_MS).items():
                if status is None or status == "gone" or StreamStatus(status).final:
                    self._drop(stream_id, why=status or "lease lost")
        now = time.monotonic()
        for stream in list(self._held.values()):
            self._count(stream, now)
            self.store.report(stream.stream_id, self.worker_name, stream.stats(), stream.tracker_state)
        if len(self._held) < self.max_streams and not self._stop.is_set():
            self._claim_one(now)
        self.metrics.streams_held.set(len(self._held))

    def _count(self, stream: HeldStream, now: float) -> None:
        """Frame rates since the last beat, and the metrics' share of the reader's counters."""
        source = stream.source
        then, read, processed = stream.last_beat
        if then > 0 and now > then:
            stream.fps_in = 0.5 * stream.fps_in + 0.5 * (source.frames_read - read) / (now - then)
            stream.fps_processed = 0.5 * stream.fps_processed + 0.5 * (stream.processed - processed) / (now - then)
        stream.last_beat = (now, source.frames_read, stream.processed)
        counted_read, counted_dropped, counted_reconnects = stream.counted
        self.metrics.stream_frames.labels(outcome="read").inc(source.frames_read - counted_read)
        self.metrics.stream_frames.labels(outcome="dropped").inc(source.frames_dropped - counted_dropped)
        self.metrics.stream_reconnects.inc(source.reconnects - counted_reconnects)
        stream.counted = (source.frames_read, source.frames_dropped, source.reconnects)

    def _claim_one(self, now: float) -> None:
        candidates = self.store.claimable()
        self._first_seen = {stream_id: self._first_seen.get(stream_id, now) for stream_id in candidates}
        patience = len(self._held) * CLAIM_STEP_S
        for stream_id in candidates:
            if now - self._first_seen[stream_id] < patience:
                continue
            if self.store.claim(stream_id, self.worker_name, LEASE_MS):
                record = self.store.read(stream_id)
                if record is None:
                    self.store.release(stream_id, self.worker_name)
                    continue
                self._hold(record)
                return

    def _hold(self, record: StreamRecord) -> None:
        stream_id = record.stream_id
        source = StreamSource(
            stream_id,
            record.url,
            record.params.fps,
            self._allow,
            self.doorbell,
            lambda status, error: self._set_status(stream_id, status, error),
            connect_attempts=self.settings.stream_connect_attempts,
            retry_s=self.settings.stream_retry_s,
            max_pixels=self.settings.max_video_pixels,
        )
        tracker = None
        if record.params.track:
            tracker = Tracker.from_state(record.tracker) if record.tracker else Tracker()
        stream = HeldStream(
            record=record,
            source=source,
            params=DetectParams(**record.params.model_dump(include=set(InferenceParams.model_fields))),
            tracker=tracker,
            base=record.stats,
        )
        if tracker is not None:
            confirmed = [track for track in tracker.tracks if track.track_id is not None]
            stream.confirmed = {track.track_id: track.class_id for track in confirmed}
        taken_over = record.started_at is not None
        with self._lock:
            self._held[stream_id] = stream
        self._set_status(stream_id, StreamStatus.RECONNECTING if taken_over else StreamStatus.STARTING, None)
        source.start()
        logger.info("worker %s: %s stream %s", self.worker_name, "took over" if taken_over else "holds", stream_id)

    def _drop(self, stream_id: str, why: str) -> None:
        with self._lock:
            stream = self._held.pop(stream_id, None)
        if stream is not None:
            stream.source.stop()
            self._count(stream, time.monotonic())
            logger.info("worker %s: let go of stream %s (%s)", self.worker_name, stream_id, why)

    def _set_status(self, stream_id: str, status: StreamStatus, error: str | None) -> None:
        if self.store.set_status(stream_id, status, error):
            event = StatusEvent(status=status, error=error)
            self.store.publish(stream_id, [(EventType.STATUS, event.model_dump_json())], ended_too=True)
