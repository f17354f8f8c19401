"""How a `BatchingWorker` records its jobs through rq: started, finished or failed in the registries, with
dependents enqueued, and the reply a waiting /detect request reads. Image outcomes are recorded on the
worker's completer thread; video jobs run in place (`in_place`) with the same bookkeeping rq's own
`perform_job` does.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Callable
from typing import Any

import redis
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.timeouts import JobTimeoutException
from rq.utils import now
from rq.worker import WorkerStatus as RqWorkerStatus

from jobs.contracts import FailureKind, JobFailure, ReplyMessage
from worker.batching import pair_outputs
from worker.runtime import ImageTask, Outcome

logger = logging.getLogger(__name__)

JobHandler = Callable[[Job, Queue], None]


class RqBookkeeping:
    """Mixed into `BatchingWorker` (an rq worker with `runtime`, `metrics` and a `_completer` pool)."""

    name: str
    connection: Any
    queues: list[Queue]
    runtime: Any
    metrics: Any
    _completer: Any

    def in_place(self, work: Callable[[dict[str, Any]], Any]) -> JobHandler:
        """A handler that runs `work(payload)` in this thread with rq's bookkeeping (registries, result, dependents)."""

        def handle(job: Job, queue: Queue) -> None:
            self.set_state(RqWorkerStatus.BUSY)
            execution = None
            try:
                execution = self._start_job(job, from_rq_loop=True)
                job.started_at = now()
                with self.death_penalty_class(job.timeout or queue.DEFAULT_TIMEOUT, JobTimeoutException, job_id=job.id):
                    result = work((job.kwargs or {}).get("payload") or {})
                job.ended_at = now()
                job._result = result
                job._status = JobStatus.FINISHED
                self.handle_job_success(
                    job=job, queue=queue, started_job_registry=queue.started_job_registry, execution=execution
                )
            except Exception:
                logger.exception("worker %s: job %s (%s) failed", self.name, job.id, job.description)
                job.ended_at = now()
                job._status = JobStatus.FAILED
                try:
                    self.handle_job_failure(
                        job=job, queue=queue, exc_string=traceback.format_exc(), execution=execution
                    )
                except Exception:  # Redis gone for longer than the retries: the reaper recovers the job
                    logger.exception("worker %s: could not record the failure of job %s", self.name, job.id)

        return handle

    def _submit_completion(self, function: Callable[..., None], *args: Any) -> None:
        assert self._completer is not None
        self._completer.submit(self._guarded, function, *args)

    def _guarded(self, function: Callable[..., None], *args: Any) -> None:
        try:
            function(*args)
        except Exception:
            logger.exception("worker %s: recording job state failed", self.name)

    def _start_jobs(self, tasks: list[ImageTask]) -> None:
        for task in tasks:
            self._start_job(task.job, from_rq_loop=task.from_rq_loop, task=task)

    def _start_job(self, job: Job, from_rq_loop: bool, task: ImageTask | None = None) -> Any:
        execution = self.prepare_execution(job)
        self.prepare_job_execution(job, remove_from_intermediate_queue=from_rq_loop and len(self.queues) == 1)
        if task is not None:
            task.execution = execution
        return execution

    def _finish_jobs(self, tasks: list[ImageTask], outcomes: list[Outcome]) -> None:
        for task, outcome in pair_outputs(tasks, outcomes, "run"):
            try:
                self._finish_job(task, outcome)
            except Exception:
                logger.exception("worker %s: could not record the outcome of job %s", self.name, task.job.id)
            self._reply(task, outcome)

    def _finish_job(self, task: ImageTask, outcome: Outcome) -> None:
        job = task.job
        if task.execution is None:
            self._start_job(job, from_rq_loop=False, task=task)
        job.ended_at = now()
        if outcome.failure is None and outcome.result is not None:
            job._result = outcome.result.model_dump(mode="json", exclude={"gradcam"}) | {
                "gradcam": outcome.result.gradcam is not None
            }
            job._status = JobStatus.FINISHED
            self.handle_job_success(
                job=job,
                queue=task.queue,
                started_job_registry=task.queue.started_job_registry,
                execution=task.execution,
            )
            return
        failure = outcome.failure or JobFailure(kind=FailureKind.INTERNAL, detail="no result")
        self.metrics.failures.labels(reason=failure.kind.value).inc()
        job._status = JobStatus.FAILED
        self.handle_job_failure(
            job=job, queue=task.queue, exc_string=f"{failure.kind.value}: {failure.detail}", execution=task.execution
        )

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
            with self.connection.pipeline(transaction=False) as pipeline:
                pipeline.rpush(payload.reply_key, message.model_dump_json())
                pipeline.expire(payload.reply_key, keep_s)
                pipeline.delete(payload.data_key)  # answered: the image bytes are no longer needed
                pipeline.execute()
        except redis.RedisError:
            logger.exception("worker %s: could not reply for job %s", self.name, task.job.id)

    def _record_invalid(self, job: Job, source: Queue, detail: str) -> None:
        execution = self._start_job(job, from_rq_loop=False)
        job.ended_at = now()
        self.metrics.failures.labels(reason=FailureKind.INTERNAL.value).inc()
        self.handle_job_failure(job=job, queue=source, exc_string=f"internal: {detail}", execution=execution)
