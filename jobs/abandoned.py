"""Jobs whose worker died: how they are recognised, retried and failed, the same way for images and video.

A worker publishes `<prefix>:workers:<name>` with a 15 s TTL while it lives, and names itself in a job's
`worker_name` when it takes the job. A job that is still "queued" or "started" while that record is gone was
abandoned by a dead worker. It is retried by putting it back at the front of its queue, or failed through rq
(out of the started registry, into the failed one, its dependents released), as rq's own cleanup would do
once the job's timeout had passed, only sooner.

Used by the API (image jobs of a waiting request, service/queueing.py) and by every worker's reaper thread
(video chunks, worker/reaper.py). No torch, no asyncio.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis
from rq.job import Job, JobStatus
from rq.job_lifecycle import record_job_failure
from rq.queue import Queue

logger = logging.getLogger(__name__)


def holder_gone(connection: redis.Redis, job: Job, worker_key: Callable[[str], str]) -> bool:
    """True when `job` is held (claimed while queued, or started) by a worker whose record has expired.

    `worker_key` maps a worker name to its record's key (`Settings.worker_key`).
    """
    if job.get_status(refresh=False) not in (JobStatus.STARTED, JobStatus.QUEUED) or not job.worker_name:
        return False
    return not connection.exists(worker_key(job.worker_name))


def retries_of(job: Job) -> int:
    return int((job.meta or {}).get("retries", 0))


def requeue(queue: Queue, job: Job) -> None:
    """Put an abandoned job back at the front of its queue for another worker, counting the retry."""
    job.meta["retries"] = retries_of(job) + 1
    job.save_meta()
    with queue.connection.pipeline() as pipeline:
        queue.started_job_registry.remove_executions(job, pipeline=pipeline)
        job.set_status(JobStatus.QUEUED, pipeline=pipeline)
        pipeline.hset(job.key, "worker_name", "")
        queue.push_job_id(job.id, pipeline=pipeline, at_front=True)
        pipeline.execute()
    job.worker_name = None


def fail(queue: Queue, job: Job, detail: str) -> None:
    """Fail an abandoned job through rq and release the jobs that depend on it."""
    with queue.connection.pipeline() as pipeline:
        queue.started_job_registry.remove_executions(job, pipeline=pipeline)
        record_job_failure(job, f"abandoned: {detail}", pipeline)
        pipeline.execute()
    queue.enqueue_dependents(job, refresh_job_status=False)
