"""Enqueue image jobs through rq and wait for their results, push-based.

One rq job per image (rq's JSON serializer; the bytes go raw under a key with a TTL). The worker pushes a
`ReplyMessage` per job onto the request's reply list; the API waits on it with BLPOP (redis.asyncio), so
waiting costs no polling. On timeout the unfinished jobs are canceled through rq and their keys deleted.

While it waits, the API also watches for abandoned jobs: every few seconds without a reply it checks the
request's unanswered jobs. A job held by a worker whose heartbeat record has expired (the worker crashed or
was killed) is abandoned: "started" by it, or "queued" but already popped by it (a worker names itself in
the job's `worker_name` when it takes a job ahead of its batch). Such a job is retried once: put back at the
front of the queue for another live worker, within the request's deadline. With no other live worker, or
after its retry, it is failed through rq (out of the started registry, into the failed one) and answered
as a worker failure naming the job, instead of hanging until the timeout.

rq is synchronous: `enqueue`, `cancel` and `abandoned` are plain functions run in the thread pool.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis
from starlette.concurrency import run_in_threadpool

from jobs import rqueue
from jobs.contracts import (
    JOB_FUNCTION,
    DetectParams,
    FailureKind,
    ImageJobPayload,
    JobFailure,
    ModelInfo,
    ReplyMessage,
    WorkerState,
    WorkerStatus,
)
from jobs.rqueue import queue_key
from jobs.settings import Settings
from service.errors import QueueFull, ServiceUnavailable

logger = logging.getLogger(__name__)

RESULT_TTL_S = 600
FAILURE_TTL_S = 24 * 3600
QUEUE_FULL_RETRY_AFTER_S = 2
UNAVAILABLE_RETRY_AFTER_S = 5
ABANDON_CHECK_S = 2.0  # how often a waiting request checks its unanswered jobs for a vanished worker
ABANDONED_RETRIES = 1  # times a job of a dead worker is given to another worker before it fails


@dataclass(frozen=True)
class ImageUpload:
    """One validated image of a request."""

    filename: str
    data: bytes
    width: int
    height: int


@dataclass(frozen=True)
class Submission:
    """The jobs of one request."""

    request_id: str
    reply_key: str
    job_ids: list[str]
    deadline: float


def unavailable(settings: Settings, exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"Redis at {settings.redis_display_url} is unreachable ({type(exc).__name__}: {exc}); "
        "start Redis or set MASENET_REDIS_URL, then retry",
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
    )


SERVED_MODEL_TTL_S = 5.0


class JobBroker:
    """The API's side of the queue: capacity check, enqueue, wait, cancel, worker registry."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # rq needs a synchronous client; BLPOP waits use the asyncio one, whose read timeout must outlast a
        # BLPOP of up to MASENET_TIMEOUT_S (redis-py's default of 5 s would cut long waits short).
        self.sync_redis = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2.0, socket_timeout=5.0)
        self.async_redis = aioredis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2.0, socket_timeout=settings.timeout_s + 10.0
        )
        self.queue = rqueue.queue(self.sync_redis, settings.image_queue)
        self._served: tuple[float, ModelInfo | None] = (-math.inf, None)  # (monotonic time read, model)

    async def close(self) -> None:
        await self.async_redis.aclose()
        self.sync_redis.close()

    async def ping(self) -> None:
        await self.async_redis.ping()

    async def check_capacity(self, image_count: int) -> int:
        """Raise QueueFull (503) if the image queue would hold more than MASENET_MAX_QUEUE images."""
        depth = int(await self.async_redis.llen(queue_key(self.settings.image_queue)))
        if depth + image_count > self.settings.max_queue:
            raise QueueFull(
                f"the image queue holds {depth} images and this request adds {image_count}, above the limit of "
                f"{self.settings.max_queue} (MASENET_MAX_QUEUE): retry after the Retry-After delay",
                headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)},
            )
        return depth

    def enqueue(self, images: list[ImageUpload], params: DetectParams) -> Submission:
        """Store the bytes and enqueue one rq job per image, all in one transaction."""
        request_id = uuid.uuid4().hex
        reply_key = self.settings.reply_key(request_id)
        now = time.time()
        deadline = now + self.settings.timeout_s
        keep_s = math.ceil(self.settings.timeout_s) + 60
        job_ids = [uuid.uuid4().hex for _ in images]
        job_data = []
        with self.sync_redis.pipeline(transaction=True) as pipeline:
            for index, (job_id, image) in enumerate(zip(job_ids, images, strict=True)):
                data_key = self.settings.data_key(job_id)
                pipeline.set(data_key, image.data, ex=keep_s)
                payload = ImageJobPayload(
                    request_id=request_id,
                    index=index,
                    filename=image.filename,
                    data_key=data_key,
                    reply_key=reply_key,
                    params=params,
                    enqueued_at=now,
                    deadline=deadline,
                )
                job_data.append(
                    rqueue.NewJob(
                        JOB_FUNCTION,
                        payload.model_dump(mode="json"),
                        job_id=job_id,
                        description=f"detect {image.filename} ({image.width}x{image.height})",
                        timeout=keep_s,
                        ttl=keep_s,
                        result_ttl=RESULT_TTL_S,
                        failure_ttl=FAILURE_TTL_S,
                    )
                )
            rqueue.enqueue(self.queue, job_data, pipeline=pipeline)
            pipeline.execute()
        return Submission(request_id=request_id, reply_key=reply_key, job_ids=job_ids, deadline=deadline)

    async def wait(self, submission: Submission) -> dict[int, ReplyMessage]:
        """Collect one reply per job until all arrived, the deadline passed, or a job was abandoned.

        BLPOP in slices of ABANDON_CHECK_S; after a slice without a reply, the unanswered jobs are checked
        for a dead worker (see `abandoned`): its jobs are retried, or come back as failure replies.
        """
        replies: dict[int, ReplyMessage] = {}
        expected = len(submission.job_ids)
        while len(replies) < expected:
            remaining = submission.deadline - time.time()
            if remaining <= 0:
                break
            item = await self.async_redis.blpop(
                [submission.reply_key], timeout=max(min(remaining, ABANDON_CHECK_S), 0.01)
            )
            if item is not None:
                message = ReplyMessage.model_validate_json(item[1])
                replies[message.index] = message
                continue
            lost = await run_in_threadpool(self.abandoned, submission, set(replies))
            if lost:
                replies.update(lost)
                break
        await self.async_redis.delete(submission.reply_key)
        return replies

    def abandoned(self, submission: Submission, answered: set[int]) -> dict[int, ReplyMessage]:
        """Retry or fail the unanswered jobs held by a worker whose heartbeat record has expired.

        Returns failure replies for the jobs that failed; retried jobs stay unanswered and are waited for.
        """
        lost: dict[int, ReplyMessage] = {}
        for index, job_id in enumerate(submission.job_ids):
            if index in answered:
                continue
            job = rqueue.fetch(self.sync_redis, job_id)
            if job is None or not rqueue.holder_gone(self.sync_redis, job, self.settings.worker_key):
                continue
            retries = rqueue.retries_of(job)
            time_left = submission.deadline - time.time() > ABANDON_CHECK_S
            if retries < ABANDONED_RETRIES and time_left and self.live_worker():
                logger.warning("job %s: worker %s vanished while holding it; retrying it", job_id, job.worker_name)
                rqueue.requeue(self.queue, job)
                continue
            detail = (
                f"worker {job.worker_name} stopped sending heartbeats while it held this job (it crashed or was "
                "killed)" + (" and its retry failed the same way" if retries else "") + "; retry the request"
            )
            logger.warning("job %s abandoned: %s", job_id, detail)
            rqueue.fail_abandoned(self.queue, job, detail)
            self.sync_redis.delete(self.settings.data_key(job.id))
            failure = JobFailure(kind=FailureKind.INTERNAL, detail=detail)
            lost[index] = ReplyMessage(job_id=job_id, index=index, failure=failure)
        return lost

    def live_worker(self) -> bool:
        """Whether some worker with a loaded model is publishing its heartbeat record."""
        for key in self.sync_redis.scan_iter(match=self.settings.workers_key_pattern, count=100):
            raw = self.sync_redis.get(key)
            if raw is not None and WorkerState.model_validate_json(raw).status == WorkerStatus.READY:
                return True
        return False

    def cancel(self, submission: Submission, finished_indices: set[int]) -> list[str]:
        """Cancel the jobs that did not answer (queued ones leave the queue) and delete their keys."""
        canceled = []
        for index, job_id in enumerate(submission.job_ids):
            if index in finished_indices:
                continue
            try:
                if rqueue.cancel_waiting(self.sync_redis, job_id, expire_s=RESULT_TTL_S):  # expires like a result
                    canceled.append(job_id)
            except redis.RedisError:
                logger.warning("could not cancel job %s", job_id, exc_info=True)
            self.sync_redis.delete(self.settings.data_key(job_id))
        self.sync_redis.delete(submission.reply_key)
        return canceled

    async def served_model(self) -> ModelInfo | None:
        """The model a ready worker serves (the defaults of requests that do not choose), or None when none is.

        Read from the worker records at most every SERVED_MODEL_TTL_S: a SCAN walks the whole keyspace, too much
        for every request, and a worker's model changes only when it restarts.
        """
        read_at, model = self._served
        if model is None or time.monotonic() - read_at > SERVED_MODEL_TTL_S:
            states = await self.workers()
            model = next((state.model for state in states if state.status == WorkerStatus.READY), None)
            self._served = (time.monotonic(), model)
        return model

    async def workers(self) -> list[WorkerState]:
        """The live workers' heartbeat records (expired ones are gone from Redis)."""
        keys = [key async for key in self.async_redis.scan_iter(match=self.settings.workers_key_pattern, count=100)]
        if not keys:
            return []
        states = []
        for raw in await self.async_redis.mget(keys):
            if raw is None:
                continue
            try:
                states.append(WorkerState.model_validate_json(raw))
            except ValueError:
                logger.warning("ignoring malformed worker record %r", raw[:200])
        return sorted(states, key=lambda state: state.name)


def readiness_problem(states: list[WorkerState]) -> str | None:
    """None when at least one worker has its model loaded, else why the service is not ready."""
    if any(state.status == WorkerStatus.READY for state in states):
        return None
    failed = [state for state in states if state.status == WorkerStatus.FAILED]
    if failed:
        reasons = "; ".join(f"worker {state.name}: {state.error}" for state in failed)
        return f"no worker has a model loaded: {reasons}"
    if states:
        return "workers are still loading the model: " + ", ".join(state.name for state in states)
    return "no live worker: start one with `masenet worker` (same MASENET_REDIS_URL and MASENET_QUEUE_PREFIX)"
