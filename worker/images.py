"""Image jobs as a source of the scheduling loop: popped ahead, decoded in a pool, run in the passes it picks.

    feeder thread   pops image jobs (BLPOP) while this worker holds fewer than `max_held`, claims each one
                    (its `worker_name`, so the API retries it if this process dies) and starts decoding it
    waiting         the decoded jobs, each with its bucket (padded input shape, resize rule, views, Grad-CAM);
                    a job that failed before inference (bad payload, bad image, deadline passed) is answered
                    at once
    take, run       the loop's chosen pass, taken at once and run in a lane's thread: jobs whose client left
                    are skipped, the rest run through `InferenceRuntime.run` and each is answered
    completer       one thread records every job through rq (started, then finished or failed) and pushes the
                    reply the API waits for, so Redis round trips never hold the device

Jobs that are not MASENet's go to `foreign`, which the worker runs the rq way when no image waits.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from jobs import rqueue
from jobs.contracts import FailureKind, ImageJobPayload, JobFailure, JobKind, ReplyMessage
from worker.batching import pair_outputs
from worker.metrics import WorkerMetrics
from worker.runtime import ImageTask, InferenceRuntime, Outcome
from worker.schedule import Waiting, WorkClass

logger = logging.getLogger(__name__)

FEED_POLL_S = 0.05  # the feeder's BLPOP timeout: how quickly it notices a stop
DECODE_THREADS = 2


class ImageSource:
    """The image queue of one worker, as the scheduling loop sees it."""

    work_class = WorkClass.IMAGE

    def __init__(
        self,
        rq: rqueue.RqWorker,
        queue_name: str,
        runtime: InferenceRuntime,
        metrics: WorkerMetrics,
        max_held: int,
        wake: threading.Event,
        foreign: queue.Queue[rqueue.Taken],
    ) -> None:
        self.rq = rq
        self.queue_name = queue_name
        self.runtime = runtime
        self.metrics = metrics
        self.max_held = max(1, max_held)
        self.wake = wake
        self.foreign = foreign
        self._held: dict[str, ImageTask] = {}
        self._lock = threading.Lock()
        self._intake = threading.Event()  # set while the feeder may pop
        self._popping = threading.Lock()  # held by the feeder from a pop until its job is held
        self._closed = threading.Event()
        self._decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")
        self._completer = ThreadPoolExecutor(1, thread_name_prefix="complete")
        self._feeder = threading.Thread(target=self._feed, name="image-feeder", daemon=True)

    def start(self) -> ImageSource:
        self._intake.set()
        self._feeder.start()
        return self

    def stop_intake(self) -> None:
        """Pop no more jobs (a warm shutdown); those held are still run. Returns once no pop is under way."""
        self._intake.clear()
        with self._popping:
            pass

    def close(self) -> None:
        """Stop the feeder and wait until every outcome is recorded."""
        self._intake.clear()
        self._closed.set()
        if self._feeder.is_alive():
            self._feeder.join(timeout=5.0)
        self._decoder.shutdown(wait=False, cancel_futures=True)
        self._completer.shutdown(wait=True)

    @property
    def busy(self) -> bool:
        return bool(self._held)

    # the loop's side
    def waiting(self, now: float) -> list[Waiting]:
        with self._lock:
            tasks = list(self._held.values())
        ready, failed = [], []
        for task in tasks:
            if task.failure is not None or (task.decoded.done() and task.decoded.exception() is not None):
                failed.append(task)
            elif task.decoded.done():
                image = task.decoded.result()
                bucket = self.runtime.bucket(task.params, image.width, image.height)
                cost = self.runtime.cost(task.params, image.width, image.height)
                since, views, beside = task.payload.enqueued_at, self.runtime.views(task), not task.params.gradcam
                ready.append(Waiting(self.work_class, bucket, since, views, cost, ref=task, beside=beside))
        if failed:
            self.run(self._take(failed))  # answered with their failure, no forward pass
        return ready

    def take(self, items: Sequence[Waiting]) -> list[ImageTask]:
        return self._take([item.ref for item in items])

    def run(self, tasks: list[ImageTask]) -> None:
        """One pass (any thread): the jobs whose client left are skipped, the others run and are answered."""
        tasks = self._still_wanted(tasks)
        if not tasks:
            return
        self._complete(self._start, tasks)
        outcomes = self.runtime.run(tasks)
        self._complete(self._finish, tasks, outcomes)

    def _take(self, tasks: list[ImageTask]) -> list[ImageTask]:
        with self._lock:
            for task in tasks:
                self._held.pop(task.job.id, None)
        return tasks

    # feeder thread
    def _feed(self) -> None:
        while not self._closed.is_set():
            if not self._intake.is_set() or len(self._held) >= self.max_held:
                self._closed.wait(FEED_POLL_S)
                continue
            with self._popping:
                if self._intake.is_set():
                    self._pop_one()

    def _pop_one(self) -> None:
        try:
            taken = self.rq.pop(self.queue_name, timeout_s=FEED_POLL_S)
        except redis.RedisError as exc:
            logger.warning("worker %s: cannot pop image jobs: %s", self.rq.name, exc)
            self._closed.wait(1.0)
            return
        if taken is None:
            return
        if taken.kind is None:
            self.foreign.put(taken)
            return
        task = self._task(taken)
        if task is not None:
            with self._lock:
                self._held[task.job.id] = task
            task.decoded.add_done_callback(lambda _: self.wake.set())
            self.wake.set()

    def _task(self, taken: rqueue.Taken) -> ImageTask | None:
        """Validate the payload, measure the queue wait, start decoding (or note why not)."""
        picked_at = time.time()
        try:
            if taken.kind != JobKind.IMAGE.value:
                raise ValueError(f"a {taken.kind} job on the image queue")
            payload = ImageJobPayload.model_validate(taken.payload)
        except Exception as exc:
            logger.error("worker %s: job %s is not a valid image job: %s", self.rq.name, taken.job.id, exc)
            self._complete(self._invalid, taken, f"invalid image job payload: {exc}")
            return None
        task = ImageTask(job=taken.job, taken=taken, payload=payload, picked_at=picked_at)
        self.metrics.queue_wait.labels(queue="images").observe(max(0.0, picked_at - payload.enqueued_at))
        if picked_at > payload.deadline:
            task.failure = JobFailure(
                kind=FailureKind.TIMEOUT, detail="the request's deadline passed before a worker took the job"
            )
        else:
            task.decoded = self._decoder.submit(self.runtime.decode, payload)
        return task

    def _still_wanted(self, tasks: list[ImageTask]) -> list[ImageTask]:
        """The tasks whose request still waits: the API cancels the jobs of a request whose client left (or that
        timed out), and a canceled job is skipped here, not computed for nobody."""
        try:
            gone = rqueue.canceled(self.rq.connection, [task.job.id for task in tasks])
        except redis.RedisError as exc:
            logger.warning("worker %s: cannot check for canceled jobs: %s", self.rq.name, exc)
            return tasks
        if any(gone):
            self.metrics.skipped.inc(sum(gone))
            logger.info("worker %s: skipped %d image job(s) whose client left", self.rq.name, sum(gone))
        return [task for task, left in zip(tasks, gone, strict=True) if not left]

    # completer thread
    def _complete(self, function: Callable[..., None], *args: Any) -> None:
        self._completer.submit(self._guarded, function, *args)

    def _guarded(self, function: Callable[..., None], *args: Any) -> None:
        try:
            function(*args)
        except Exception:
            logger.exception("worker %s: recording job state failed", self.rq.name)

    def _start(self, tasks: list[ImageTask]) -> None:
        for task in tasks:
            self.rq.start(task.taken)

    def _finish(self, tasks: list[ImageTask], outcomes: list[Outcome]) -> None:
        for task, outcome in pair_outputs(tasks, outcomes, "run"):
            try:
                self._record(task, outcome)
            except Exception:
                logger.exception("worker %s: could not record the outcome of job %s", self.rq.name, task.job.id)
            self._reply(task, outcome)

    def _record(self, task: ImageTask, outcome: Outcome) -> None:
        if outcome.failure is None and outcome.result is not None:
            result = outcome.result.model_dump(mode="json", exclude={"gradcam"})
            self.rq.succeed(task.taken, result | {"gradcam": outcome.result.gradcam is not None})
            return
        failure = outcome.failure or JobFailure(kind=FailureKind.INTERNAL, detail="no result")
        self.metrics.failures.labels(reason=failure.kind.value).inc()
        self.rq.fail(task.taken, f"{failure.kind.value}: {failure.detail}")

    def _reply(self, task: ImageTask, outcome: Outcome) -> None:
        payload = task.payload
        message = ReplyMessage(
            job_id=task.job.id,
            index=payload.index,
            result=outcome.result,
            failure=outcome.failure,
            model=self.runtime.model_info,
        )
        keep_s = max(1, math.ceil(payload.deadline - time.time()) + 60)
        try:
            with self.rq.connection.pipeline(transaction=False) as pipeline:
                pipeline.rpush(payload.reply_key, message.model_dump_json())
                pipeline.expire(payload.reply_key, keep_s)
                pipeline.delete(payload.data_key)  # answered: the image bytes are no longer needed
                pipeline.execute()
        except redis.RedisError:
            logger.exception("worker %s: could not reply for job %s", self.rq.name, task.job.id)

    def _invalid(self, taken: rqueue.Taken, detail: str) -> None:
        self.metrics.failures.labels(reason=FailureKind.INTERNAL.value).inc()
        self.rq.fail(taken, f"internal: {detail}")
