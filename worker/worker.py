"""`BatchingWorker`: loads MASENet once and serves images, live streams and video through one scheduling loop.

    ImageSource     image jobs popped ahead and decoded in a pool (worker/images.py)
    StreamHub       the newest frame of every held live stream (worker/streams.py)
    VideoSource     the frames of the running video chunk; finalize steps in a side thread (worker/video_source.py)
    SchedulingLoop  what runs next: one pass from one bucket, chosen by worker/schedule.py, run in a main lane,
                    and cheap images in an express lane beside an expensive pass (worker/loop.py)

rq sits behind `jobs.rqueue.RqWorker`, an rq `SimpleWorker` (no fork after CUDA starts): this class registers
in rq's worker registry, pops and records jobs only through it, and runs jobs of other functions the rq way.
rq's own dequeue loop is never used. Usable as `rq worker -w worker.worker.BatchingWorker <prefix>:images
<prefix>:video` (`--burst` exits once the queues are empty and nothing is held); the model loads in `work()`.
If it fails to load, the worker publishes the reason (GET /readyz shows it), keeps `masenet_worker_up` at 0,
takes no jobs and stays up until it is stopped. SIGTERM or SIGINT: a warm shutdown (no new jobs, streams
handed back, the work held finished); a second one exits at once.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
from typing import Any

import redis

from jobs import rqueue
from jobs.contracts import ModelInfo, WorkerState, WorkerStatus
from jobs.settings import Settings, get_settings
from jobs.store import JobStorage, VideoJobStore
from jobs.stream_store import StreamStore
from worker.images import ImageSource
from worker.loop import SchedulingLoop, Source
from worker.metrics import WorkerMetrics
from worker.presence import StatePublisher, outage_retry
from worker.reaper import Reaper
from worker.runtime import InferenceRuntime, prefer_passive_cpu_threads
from worker.schedule import Policy
from worker.streams import StreamHub
from worker.video import VideoJobs
from worker.video_source import VideoSource

logger = logging.getLogger(__name__)

RQ_HEARTBEAT_S = 10.0
REDIS_OUTAGE_S = 60.0  # a worker's Redis calls retry through an outage this long (Redis restarted, failed over)
IDLE_S = 0.5  # the longest the loop sleeps without work (sources wake it sooner)


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class BatchingWorker(rqueue.RqWorker):
    """Loads MASENet once and runs image jobs, live streams and video chunks in passes its loop schedules."""

    def __init__(self, queues: Any, *args: Any, settings: Settings | None = None, **kwargs: Any) -> None:
        serializer = kwargs.pop("serializer", None)
        if serializer not in (None, rqueue.JSONSerializer, "json", "rq.serializers.JSONSerializer"):
            logger.warning("ignoring serializer %r: MASENet jobs are JSON only", serializer)
        names = [queues] if isinstance(queues, str) else list(queues)
        names = [str(getattr(item, "name", item)) for item in names]
        super().__init__(names, *args, serializer=rqueue.JSONSerializer, **kwargs)
        self.connection.set_retry(outage_retry(REDIS_OUTAGE_S))
        prefer_passive_cpu_threads()  # before the model (and torch) loads in work()
        self.settings = settings or get_settings()
        self.metrics = WorkerMetrics()
        self.runtime = InferenceRuntime(self.settings, self.connection, self.metrics, worker_name=self.name)
        self.max_images = self.settings.effective_max_batch(on_gpu=False)  # images per forward pass, views counted
        self.max_batch = self.max_images  # frames per pass at the default test-time augmentation
        self.metrics_port: int | None = None
        self.wake = threading.Event()
        self.foreign: queue.Queue[rqueue.Taken] = queue.Queue()
        self.images: ImageSource | None = None
        self.video: VideoSource | None = None
        self.streams: StreamHub | None = None
        self.loop: SchedulingLoop | None = None
        self._publisher: StatePublisher | None = None
        self._reaper: Reaper | None = None
        self._stopping = threading.Event()
        self._last_rq_heartbeat = 0.0

    # lifecycle
    def work(self, burst: bool = False, **_rq_options: Any) -> bool:
        """Start metrics, load the model, then run the scheduling loop (or idle, publishing the failure).

        rq's own options (logging, max_jobs, ...) are accepted and ignored. Returns whether any pass ran.
        """
        try:
            self.metrics_port = self.metrics.serve(self.settings.worker_metrics_port)
            logger.info("worker %s: metrics on port %d", self.name, self.metrics_port)
        except OSError as exc:
            logger.error("worker %s: metrics server not started: %s", self.name, exc)
        self._publisher = StatePublisher(self.connection, self.settings.worker_key(self.name), self._initial_state())
        self._publisher.start()
        self._install_signals()
        try:
            info = self.runtime.load()
        except Exception as exc:
            logger.exception("worker %s: the model failed to load; taking no jobs", self.name)
            self.metrics.up.set(0)
            self._publisher.update(
                status=WorkerStatus.FAILED, error=f"model failed to load: {type(exc).__name__}: {exc}"
            )
            self._stopping.wait()
            self._publisher.stop()
            return False
        self.rq_open()
        try:
            self._on_model_loaded(info)
            return self._serve(burst)
        finally:
            self.metrics.up.set(0)
            self._close()
            self.rq_close()
            self._publisher.stop()

    def _initial_state(self) -> WorkerState:
        return WorkerState(
            name=self.name,
            status=WorkerStatus.LOADING,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            metrics_port=self.metrics_port,
            max_delay_ms=self.settings.max_delay_ms,
            queues=self.queue_names(),
            started_at=time.time(),
        )

    def _on_model_loaded(self, info: ModelInfo) -> None:
        # MASENET_MAX_BATCH counts images per forward pass; with test-time augmentation each frame brings its views.
        settings, runtime = self.settings, self.runtime
        self.max_images = settings.effective_max_batch(runtime.on_gpu)
        self.max_batch = runtime.detector.frames_per_pass(self.max_images)
        self.metrics.model_info.labels(
            name=info.name, scale=info.scale, device=info.device, weights_sha256=info.weights_sha256
        ).set(1)
        if runtime.on_gpu:
            self.metrics.enable_gpu()
        sources: list[Source] = []
        names = self.queue_names()
        if settings.image_queue in names:
            held = 2 * self.max_batch
            self.images = ImageSource(self, settings.image_queue, runtime, self.metrics, held, self.wake, self.foreign)
            sources.append(self.images.start())
        if settings.video_queue in names:
            store = VideoJobStore(
                self.connection, settings.queue_prefix, JobStorage(settings.storage), settings.job_ttl_s
            )
            jobs = VideoJobs(store, runtime, self.name, self.max_images, frames_processed=self.metrics.video_frames.inc)
            self.video = VideoSource(self, settings.video_queue, jobs, runtime, self.foreign)
            sources.append(self.video)
        if settings.max_streams_per_worker > 0:
            stream_store = StreamStore(
                self.connection, settings.queue_prefix, settings.stream_ttl_s, settings.stream_events_max
            )
            self.streams = StreamHub(stream_store, runtime, self.name, settings, self.metrics, self.wake)
            sources.append(self.streams.start())
        policy = Policy(
            max_images=self.max_images,
            max_pass_cost=settings.max_pass_pixels,
            pass_target_s=settings.pass_target_ms / 1000.0,
            max_delay_s=settings.max_delay_ms / 1000.0,
            linger_s=settings.interactive_linger_ms / 1000.0,
            express_after_s=2 * settings.pass_target_ms / 1000.0,
        )
        self.loop = SchedulingLoop(sources, policy, self.metrics, wake=self.wake)
        self.loop.on_lanes(runtime.warm_up)  # each lane's thread readies its runtime before the first job
        self._reaper = Reaper(self.connection, settings)
        self._reaper.start()
        self.metrics.up.set(1)
        assert self._publisher is not None
        self._publisher.update(status=WorkerStatus.READY, model=info, max_batch=self.max_batch)
        logger.info(
            "worker %s: %s on %s ready (max batch %d, max delay %g ms)",
            self.name,
            info.name,
            info.device,
            self.max_batch,
            settings.max_delay_ms,
        )

    def _serve(self, burst: bool) -> bool:
        """Run passes until stopped (or, in a burst, until the queues are empty and nothing is held)."""
        assert self.loop is not None
        worked = False
        while True:
            stopping = self._stopping.is_set()
            if stopping:
                self._stop_intake()
            ran = self.loop.step(idle_s=IDLE_S) is not None
            worked = worked or ran
            if not ran:
                worked = self._run_foreign() or worked
            busy = self.loop.busy or not self.foreign.empty()
            self._maybe_heartbeat(busy)
            if not busy and not ran and (stopping or (burst and self._queues_empty())):
                return worked

    def _run_foreign(self) -> bool:
        """Run one job of another function the rq way, once no image job waits (images first)."""
        if self.foreign.empty() or (self.images is not None and (self.images.busy or not self._image_queue_empty())):
            return False
        taken = self.foreign.get_nowait()
        self.run_rq_way(taken)
        return True

    def _queues_empty(self) -> bool:
        try:
            return all(self.queue_length(name) == 0 for name in self.queue_names()) and self.foreign.empty()
        except redis.RedisError:
            return False

    def _image_queue_empty(self) -> bool:
        try:
            return self.queue_length(self.settings.image_queue) == 0
        except redis.RedisError:
            return False

    def _stop_intake(self) -> None:
        if self.images is not None:
            self.images.stop_intake()
        if self.video is not None:
            self.video.intake = False
        if self.streams is not None and self.streams.active:
            self.streams.close()  # the leases go back at once: other workers take the streams over

    def _close(self) -> None:
        if self.loop is not None:
            self.loop.close()
        if self._reaper is not None:
            self._reaper.stop()
        if self.streams is not None:
            self.streams.close()
        if self.images is not None:
            self.images.close()
        if self.video is not None:
            self.video.close()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum: int, _frame: Any) -> None:
            if self._stopping.is_set():
                logger.warning("worker %s: second signal %d: exiting now", self.name, signum)
                raise SystemExit(1)
            logger.info("worker %s: warm shutdown (signal %d): finishing the work held", self.name, signum)
            self._stopping.set()
            self.wake.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, stop)

    def _maybe_heartbeat(self, busy: bool) -> None:
        """rq's view of this worker: busy or idle (a change is written at once) and its heartbeat."""
        try:
            self.rq_busy(busy)
            if time.monotonic() - self._last_rq_heartbeat > RQ_HEARTBEAT_S:
                self._last_rq_heartbeat = time.monotonic()
                self.rq_heartbeat()
        except redis.RedisError as exc:
            logger.warning("worker %s: heartbeat failed: %s", self.name, exc)
