"""`BatchingWorker`: an rq `SimpleWorker` (no fork after CUDA starts) that batches image jobs.

rq's loop dequeues one job at a time. When it hands over an image job, the worker opens an image session:

    feeder thread   pops more image jobs (BLPOP), fetches them and starts decoding them in a thread pool;
                    it holds at most MAX_BATCH jobs ahead, so decoding the next batch overlaps the forward
                    pass of the current one
    main thread     collect_batch (MAX_BATCH images or MAX_DELAY_MS) -> InferenceRuntime.run -> outcomes
    completer       one thread that records every job through rq (started, then finished or failed, with
                    its result, in the registries) and pushes the reply the API waits for

The session ends when no image job arrived for a short while; rq's loop then serves the video queue,
which it only reaches when the image queue is empty (queues are listened to in order). Job kinds map to
handlers in `job_handlers`: a video chunk runs its frames through the same runtime step and stage metrics
as images (worker.video), serving waiting image jobs between its batches; jobs of other functions run the
rq way, in process.

Usable as `rq worker -w worker.worker.BatchingWorker <prefix>:images <prefix>:video`; the model loads in
`work()`. If it fails to load, the worker publishes the reason (GET /readyz shows it), keeps
`masenet_worker_up` at 0, takes no jobs and stays up until it is stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
from rq.exceptions import DequeueTimeout, NoSuchJobError
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker
from rq.worker import WorkerStatus as RqWorkerStatus

from jobs.contracts import (
    JOB_FUNCTION,
    FailureKind,
    ImageJobPayload,
    JobFailure,
    JobKind,
    ModelInfo,
    WorkerState,
    WorkerStatus,
)
from jobs.settings import Settings, get_settings
from jobs.store import JobStorage, VideoJobStore
from jobs.stream_store import StreamStore
from jobs.video import ChunkPayload, FinalizePayload
from worker.batching import collect_batch
from worker.bookkeeping import JobHandler, RqBookkeeping
from worker.metrics import WorkerMetrics
from worker.presence import StatePublisher, outage_retry
from worker.reaper import Reaper
from worker.runtime import ImageTask, InferenceRuntime, prefer_passive_cpu_threads
from worker.streams import StreamHub
from worker.video import VideoJobs

logger = logging.getLogger(__name__)

SESSION_IDLE_S = 0.25  # an image session ends after this long without a new image job
FEED_POLL_S = 0.05  # feeder BLPOP timeout: how quickly it notices the end of a session
RQ_HEARTBEAT_S = 10.0
REDIS_OUTAGE_S = 60.0  # a worker's Redis calls retry through an outage this long (Redis restarted, failed over)
DECODE_THREADS = 2
STREAM_POLL_S = 0.05  # with live streams held, how long the worker waits for a frame before it looks for jobs
IDLE_POLL_S = 1  # without streams, how long one wait for a job lasts (then it looks again for streams)
STREAM_STARVE_S = 0.25  # during a long image session, live streams get a batch once they have waited this long


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def job_kind(job: Job) -> str:
    """The kind of a MASENet job (its payload's), or the function name of any other job."""
    if job.func_name == JOB_FUNCTION:
        payload = (job.kwargs or {}).get("payload") or {}
        return str(payload.get("kind", JobKind.IMAGE.value))
    return str(job.func_name)


class BatchingWorker(RqBookkeeping, SimpleWorker):
    """rq worker that loads MASENet once and runs image jobs in dynamic batches."""

    def __init__(self, queues: Any, *args: Any, settings: Settings | None = None, **kwargs: Any) -> None:
        serializer = kwargs.pop("serializer", None)
        if serializer not in (None, JSONSerializer, "json", "rq.serializers.JSONSerializer"):
            logger.warning("ignoring serializer %r: MASENet jobs are JSON only", serializer)
        names = [queues] if isinstance(queues, str | Queue) else list(queues)
        names = [item.name if isinstance(item, Queue) else str(item) for item in names]
        super().__init__(names, *args, serializer=JSONSerializer, **kwargs)
        self.connection.set_retry(outage_retry(REDIS_OUTAGE_S))
        prefer_passive_cpu_threads()  # before the model (and torch) loads in work()
        self.settings = settings or get_settings()
        self.metrics = WorkerMetrics()
        self.runtime = InferenceRuntime(self.settings, self.connection, self.metrics, worker_name=self.name)
        self.job_handlers: dict[str, JobHandler] = {JobKind.IMAGE.value: self._handle_image_job}
        self.video: VideoJobs | None = None
        self.streams: StreamHub | None = None
        self.max_images = self.settings.effective_max_batch(on_gpu=False)  # images per forward pass, views counted
        self.max_batch = self.max_images  # frames per pass at the default test-time augmentation
        self.metrics_port: int | None = None
        self._publisher: StatePublisher | None = None
        self._decoder: ThreadPoolExecutor | None = None
        self._completer: ThreadPoolExecutor | None = None
        self._last_rq_heartbeat = 0.0
        self._reaper: Reaper | None = None

    # lifecycle
    def work(self, *args: Any, **kwargs: Any) -> bool:
        """Start metrics, load the model, then run rq's loop (or idle, publishing the failure)."""
        try:
            self.metrics_port = self.metrics.serve(self.settings.worker_metrics_port)
            logger.info("worker %s: metrics on port %d", self.name, self.metrics_port)
        except OSError as exc:
            logger.error("worker %s: metrics server not started: %s", self.name, exc)
        self._publisher = StatePublisher(self.connection, self.settings.worker_key(self.name), self._initial_state())
        self._publisher.start()
        try:
            info = self.runtime.load()
        except Exception as exc:
            logger.exception("worker %s: the model failed to load; taking no jobs", self.name)
            self.metrics.up.set(0)
            self._publisher.update(
                status=WorkerStatus.FAILED, error=f"model failed to load: {type(exc).__name__}: {exc}"
            )
            self._idle_until_stopped()
            self._publisher.stop()
            return False
        self._on_model_loaded(info)
        try:
            return super().work(*args, **kwargs)
        finally:
            self.metrics.up.set(0)
            self._publisher.stop()
            if self._reaper is not None:
                self._reaper.stop()
            if self.streams is not None:
                self.streams.close()  # the leases go back at once: other workers take the streams over
            if self._completer is not None:
                self._completer.shutdown(wait=True)
            if self._decoder is not None:
                self._decoder.shutdown(wait=False, cancel_futures=True)

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
        self.max_images = self.settings.effective_max_batch(self.runtime.on_gpu)
        self.max_batch = self.runtime.detector.frames_per_pass(self.max_images)
        self._decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")
        self._completer = ThreadPoolExecutor(1, thread_name_prefix="complete")
        self.metrics.model_info.labels(
            name=info.name, scale=info.scale, device=info.device, weights_sha256=info.weights_sha256
        ).set(1)
        if self.runtime.on_gpu:
            self.metrics.enable_gpu()
        self._install_video_context()
        if self.settings.max_streams_per_worker > 0:
            store = StreamStore(
                self.connection, self.settings.queue_prefix, self.settings.stream_ttl_s, self.settings.stream_events_max
            )
            self.streams = StreamHub(store, self.runtime, self.name, self.settings, self.metrics, self.max_images)
            self.streams.start()
        self._reaper = Reaper(self.connection, self.settings)
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
            self.settings.max_delay_ms,
        )

    def _install_video_context(self) -> None:
        """Video chunks and their finalize step become handlers with this process's runtime and storage."""
        store = VideoJobStore(
            self.connection, self.settings.queue_prefix, JobStorage(self.settings.storage), self.settings.job_ttl_s
        )
        self.video = VideoJobs(
            store=store,
            inference=self.runtime,
            worker_name=self.name,
            max_images=self.max_images,
            max_delay_s=self.settings.max_delay_ms / 1000.0,
            between_batches=self._between_video_batches,
            frames_processed=self.metrics.video_frames.inc,
        )
        video = self.video
        self.job_handlers[JobKind.VIDEO_CHUNK.value] = self.in_place(
            lambda payload: video.run_chunk(ChunkPayload.model_validate(payload))
        )
        self.job_handlers[JobKind.VIDEO_FINALIZE.value] = self.in_place(
            lambda payload: video.finalize(FinalizePayload.model_validate(payload))
        )

    def _idle_until_stopped(self) -> None:
        stopped = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: stopped.set())
        stopped.wait()

    # dispatch
    def execute_job(self, job: Job, queue: Queue) -> None:
        handler = self.job_handlers.get(job_kind(job))
        if handler is None:
            super().execute_job(job, queue)  # rq's own in-process execution of jobs that are not MASENet's
            return
        handler(job, queue)
        self.set_state(RqWorkerStatus.IDLE)

    def _handle_image_job(self, job: Job, queue: Queue) -> None:
        task = self._make_task(job, queue, from_rq_loop=True)
        if task is not None:
            self._image_session(task, idle_s=SESSION_IDLE_S)

    def serve_waiting_images(self) -> None:
        """Serve the image jobs waiting now (called between video batches): interactive work goes first.

        Once it has served one, it lingers `interactive_linger_ms` for the next before video resumes: a client
        that sends frame after frame would otherwise find a video batch started in the instant between its
        reply and its next request, and wait for all of it every time.
        """
        if self.runtime.detector is None:
            return
        image_queue = Queue(self.settings.image_queue, connection=self.connection, serializer=JSONSerializer)
        job_id = self.connection.lpop(image_queue.key)
        if job_id is None:
            return
        task = self._fetch_task(job_id.decode() if isinstance(job_id, bytes) else str(job_id), image_queue)
        if task is not None:
            self._image_session(task, idle_s=self.settings.interactive_linger_ms / 1000.0)

    def _between_video_batches(self) -> None:
        self.serve_waiting_images()
        if self.streams is not None and self.streams.has_frames():
            self.streams.serve(first_timeout_s=0)

    # live streams
    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        """rq's wait for the next job, serving live streams meanwhile.

        With streams held, the worker looks for a job without blocking between batches of stream frames; without,
        it waits for a job IDLE_POLL_S at a time, so a newly claimed stream is served within a second. Returns
        None (rq's loop then ends) when a warm shutdown was asked for, or after `max_idle_time` without work.
        """
        if self.streams is None or timeout is None:  # before the model loaded, or a burst run
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        idle_since = time.monotonic()
        while not self._stop_requested:
            self._maybe_heartbeat()
            if self.should_run_maintenance_tasks:
                self.run_maintenance_tasks()
            streaming = self.streams.active
            wanted = RqWorkerStatus.BUSY if streaming else RqWorkerStatus.IDLE  # a stop then waits for the batch
            if self.get_state() != wanted:
                self.set_state(wanted)
            try:
                result = self.queue_class.dequeue_any(
                    self._ordered_queues,
                    None if streaming else IDLE_POLL_S,
                    connection=self.connection,
                    job_class=self.job_class,
                    serializer=self.serializer,
                    death_penalty_class=self.death_penalty_class,
                )
            except DequeueTimeout:
                result = None
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                logger.warning("worker %s: cannot reach Redis for jobs: %s", self.name, exc)
                time.sleep(1.0)
                continue
            if result is not None:
                self.reorder_queues(reference_queue=result[1])
                return result
            if streaming:
                self.streams.serve(first_timeout_s=STREAM_POLL_S)
                idle_since = time.monotonic()
            elif max_idle_time is not None and time.monotonic() - idle_since > max_idle_time:
                return None
        return None

    def _serve_starved_streams(self) -> None:
        streams = self.streams
        if streams is not None and streams.has_frames() and time.monotonic() - streams.last_served > STREAM_STARVE_S:
            streams.serve(first_timeout_s=0)

    # image session
    def _image_session(self, first: ImageTask, idle_s: float) -> None:
        """Batch image jobs from `first.queue` until it stays empty for `idle_s`."""
        self.set_state(RqWorkerStatus.BUSY)  # a warm shutdown now waits for the session to end
        pending: queue.Queue[ImageTask] = queue.Queue()
        slots = threading.Semaphore(self.max_batch)
        stop = threading.Event()
        slots.acquire()
        pending.put(first)
        feeder = threading.Thread(
            target=self._feed, args=(first.queue, pending, slots, stop), name="image-feeder", daemon=True
        )
        feeder.start()
        carry: ImageTask | None = None
        try:
            while not self._stop_requested:
                batch = collect_batch(
                    pending,
                    self.max_images,
                    self.settings.max_delay_ms / 1000.0,
                    weight=self.runtime.views,
                    first_timeout_s=idle_s,
                    carry=carry,
                )
                carry = batch.carry
                if not batch.items:
                    break
                for _ in batch.items:
                    slots.release()
                self._process(batch.items)
                self._maybe_heartbeat()
                self._serve_starved_streams()
        finally:
            stop.set()
            feeder.join()
            while True:  # what the feeder queued before it stopped, in passes of at most max_images, views counted
                batch = collect_batch(
                    pending, self.max_images, 0.0, weight=self.runtime.views, first_timeout_s=0, carry=carry
                )
                if not batch.items:
                    break
                carry = batch.carry
                self._process(batch.items)
            assert self._completer is not None
            self._completer.submit(lambda: None).result()  # every outcome recorded before returning

    def _feed(
        self, source: Queue, pending: queue.Queue[ImageTask], slots: threading.Semaphore, stop: threading.Event
    ) -> None:
        """Pop image jobs while the session lasts, at most `max_batch` ahead of the main thread."""
        while not stop.is_set():
            if not slots.acquire(timeout=FEED_POLL_S):
                continue
            try:
                popped = self.connection.blpop([source.key], timeout=FEED_POLL_S)
            except redis.RedisError as exc:
                slots.release()
                logger.warning("worker %s: cannot pop image jobs: %s", self.name, exc)
                stop.wait(1.0)
                continue
            task = None
            if popped is not None:
                job_id = popped[1].decode() if isinstance(popped[1], bytes) else str(popped[1])
                task = self._fetch_task(job_id, source)
            if task is None:
                slots.release()
                continue
            pending.put(task)

    def _fetch_task(self, job_id: str, source: Queue) -> ImageTask | None:
        try:
            job = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
        except NoSuchJobError:
            return None  # expired or canceled while queued
        except Exception:
            logger.exception("worker %s: cannot load job %s", self.name, job_id)
            return None
        return self._make_task(job, source, from_rq_loop=False)

    def _make_task(self, job: Job, source: Queue, from_rq_loop: bool) -> ImageTask | None:
        """Claim the job, validate the payload, measure the queue wait, start decoding (or note why not)."""
        picked_at = time.time()
        self._claim(job)
        try:
            payload = ImageJobPayload.model_validate((job.kwargs or {})["payload"])
        except Exception as exc:
            logger.error("worker %s: job %s is not a valid image job: %s", self.name, job.id, exc)
            self._submit_completion(self._record_invalid, job, source, f"invalid image job payload: {exc}")
            return None
        task = ImageTask(job=job, queue=source, payload=payload, picked_at=picked_at, from_rq_loop=from_rq_loop)
        self.metrics.queue_wait.labels(queue=source.name.rsplit(":", 1)[-1]).observe(
            max(0.0, picked_at - payload.enqueued_at)
        )
        if picked_at > payload.deadline:
            task.failure = JobFailure(
                kind=FailureKind.TIMEOUT, detail="the request's deadline passed before a worker took the job"
            )
        else:
            assert self._decoder is not None
            task.decoded = self._decoder.submit(self.runtime.decode, payload)
        return task

    def _claim(self, job: Job) -> None:
        """Name this worker in the job before it is started, so the API can retry it if this process dies."""
        job.worker_name = self.name
        try:
            self.connection.hset(job.key, "worker_name", self.name)
        except redis.RedisError as exc:
            logger.warning("worker %s: cannot claim job %s: %s", self.name, job.id, exc)

    def _process(self, tasks: list[ImageTask]) -> None:
        """Start the jobs in rq, run the batch, record the outcomes (both recordings on the completer)."""
        tasks = self._still_wanted(tasks)
        if not tasks:
            return
        self._submit_completion(self._start_jobs, tasks)
        started = time.perf_counter()
        outcomes = self.runtime.run(tasks)
        logger.debug("worker %s: batch of %d in %.1f ms", self.name, len(tasks), (time.perf_counter() - started) * 1e3)
        self._submit_completion(self._finish_jobs, tasks, outcomes)

    def _still_wanted(self, tasks: list[ImageTask]) -> list[ImageTask]:
        """The tasks whose request still waits: the API cancels the jobs of a request whose client left (or that
        timed out), and a canceled job is skipped here, not computed for nobody."""
        try:
            with self.connection.pipeline(transaction=False) as pipeline:
                for task in tasks:
                    pipeline.hget(task.job.key, "status")
                statuses = pipeline.execute()
        except redis.RedisError as exc:
            logger.warning("worker %s: cannot check for canceled jobs: %s", self.name, exc)
            return tasks
        canceled = [status in (b"canceled", "canceled") for status in statuses]
        skipped = sum(canceled)
        for task, gone in zip(tasks, canceled, strict=True):
            if gone and task.from_rq_loop and len(self.queues) == 1:  # rq's loop left it in its intermediate list
                with contextlib.suppress(redis.RedisError):
                    task.queue.intermediate_queue.remove(task.job.id)
        if skipped:
            self.metrics.skipped.inc(skipped)
            logger.info("worker %s: skipped %d image job(s) whose client left", self.name, skipped)
        return [task for task, gone in zip(tasks, canceled, strict=True) if not gone]

    def _maybe_heartbeat(self) -> None:
        if time.monotonic() - self._last_rq_heartbeat > RQ_HEARTBEAT_S:
            self._last_rq_heartbeat = time.monotonic()
            try:
                self.heartbeat()
            except redis.RedisError as exc:
                logger.warning("worker %s: heartbeat failed: %s", self.name, exc)
