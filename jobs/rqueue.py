"""rq behind one adapter: every use of rq's registries, job status and results, failure bookkeeping and key names.

The rest of the project speaks of queues, job ids and payloads; only this module knows how rq stores them.
`tests/jobs/test_rqueue.py` pins what it relies on (key names, registries, statuses, results, dependents) and
fails on an rq release that changes them; `pyproject.toml` pins rq to the minor version tested here (RQ_TESTED).

    API side      enqueue, fetch, cancel a waiting job, the keys a job owns, the length of a queue
    abandoned     a job held by a worker whose heartbeat record expired: retry it or fail it (API and reaper)
    worker side   `RqWorker`, the rq worker class `rq worker -w ...` loads: birth, heartbeat and death in rq's
                  worker registry, popping job ids, and recording a job started, finished or failed (with its
                  dependents released) exactly as rq's own loop would; jobs of other functions run the rq way

Jobs are JSON (rq's JSON serializer), never pickle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Dependency, Job, JobStatus
from rq.job_lifecycle import record_job_failure
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import SimpleWorker, Worker
from rq.worker import WorkerStatus as RqWorkerStatus

from jobs.contracts import JOB_FUNCTION, JobKind

logger = logging.getLogger(__name__)

RQ_TESTED = "3.0"  # the rq minor version whose internals this module was written and tested against
WAITING = (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED)


@dataclass(frozen=True)
class NewJob:
    """One job to enqueue: our payload under rq's function name, with its id and lifetimes."""

    function: str
    payload: dict[str, Any]
    job_id: str
    description: str
    timeout: int
    result_ttl: int
    failure_ttl: int
    ttl: int | None = None

    def data(self) -> Any:
        return Queue.prepare_data(
            self.function,
            kwargs={"payload": self.payload},
            job_id=self.job_id,
            description=self.description,
            timeout=self.timeout,
            ttl=self.ttl,
            result_ttl=self.result_ttl,
            failure_ttl=self.failure_ttl,
        )


def queue(connection: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=connection, serializer=JSONSerializer)


def queue_key(name: str) -> str:
    """The Redis list rq keeps for a queue name."""
    return f"{Queue.redis_queue_namespace_prefix}{name}"


def job_keys(job_id: str) -> list[str]:
    """Every key rq keeps for one job: its hash, its dependents and its dependencies (both spellings of rq 3.0)."""
    key = f"{Job.redis_job_namespace_prefix}{job_id}"
    return [key, f"{key}:dependents", f"{key}:dependencies", f"{Job.redis_job_namespace_prefix}:{job_id}:dependencies"]


def enqueue(target: Queue, jobs: Sequence[NewJob], pipeline: Any = None) -> list[Job]:
    """Enqueue `jobs` (inside `pipeline` when given, which the caller executes)."""
    return target.enqueue_many([job.data() for job in jobs], pipeline=pipeline)


def enqueue_after(target: Queue, job: NewJob, parents: Sequence[Job]) -> Job:
    """Enqueue `job` to run once every parent has ended, whether it finished or failed."""
    return target.enqueue_call(
        job.function,
        kwargs={"payload": job.payload},
        job_id=job.job_id,
        description=job.description,
        depends_on=Dependency(jobs=list(parents), allow_failure=True),
        timeout=job.timeout,
        result_ttl=job.result_ttl,
        failure_ttl=job.failure_ttl,
    )


def fetch(connection: redis.Redis, job_id: str) -> Job | None:
    """The job, or None when it expired or never existed."""
    try:
        return Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def payload_of(job: Job) -> dict[str, Any]:
    return dict((job.kwargs or {}).get("payload") or {})


def cancel_waiting(connection: redis.Redis, job_id: str, expire_s: int | None = None) -> bool:
    """Cancel a job that still waits in its queue (it leaves the queue); False when it already runs or ended.

    A worker may take the job between the status read and the cancel; rq then raises, and the job is left to
    its worker (which checks for cancellation itself).
    """
    job = fetch(connection, job_id)
    if job is None:
        return False
    try:
        if job.get_status() not in WAITING:
            return False
        job.cancel()
    except (InvalidJobOperation, NoSuchJobError, ValueError):
        return False
    if expire_s is not None:
        connection.expire(job.key, expire_s)
    return True


def canceled(connection: redis.Redis, job_ids: Sequence[str]) -> list[bool]:
    """Whether each job was canceled (the API cancels the jobs of a request whose client left)."""
    with connection.pipeline(transaction=False) as pipeline:
        for job_id in job_ids:
            pipeline.hget(job_keys(job_id)[0], "status")
        statuses = pipeline.execute()
    return [status in (b"canceled", "canceled") for status in statuses]


def started_job_ids(target: Queue) -> list[str]:
    return list(target.started_job_registry.get_job_ids(cleanup=False))


def claim(connection: redis.Redis, job: Job, worker_name: str) -> None:
    """Name the worker in the job before it starts, so that the job can be retried if that worker dies."""
    job.worker_name = worker_name
    connection.hset(job.key, "worker_name", worker_name)


SCAN_COUNT = 500


def forget_prefix(client: redis.Redis, prefix: str) -> None:
    """Delete what a stack with queue prefix `prefix` left in a shared Redis, and nothing of other prefixes.

    `client` decodes responses. That is the prefix's own keys (`<prefix>:*`), rq's keys named after its queues or
    workers (`rq:*<prefix>*`), its jobs with every key named after their ids (`rq:job:<id>`, its dependents and
    dependencies, `rq:results:<id>`, `rq:executions:<id>`, ...: their names do not carry the prefix, so they are
    found through the job's origin queue), the results streams of its workers, and its entries in rq's global
    sets of queues and workers.
    """
    job_prefix, worker_prefix = Job.redis_job_namespace_prefix, Worker.redis_worker_namespace_prefix
    doomed = {key for pattern in (f"{prefix}:*", f"rq:*{prefix}*") for key in _scan(client, pattern)}
    ids = set()
    for key in _scan(client, f"{job_prefix}*"):
        job_id = key.removeprefix(job_prefix)
        if ":" not in job_id and (client.hget(key, "origin") or "").startswith(f"{prefix}:"):
            ids.add(job_id)
    if ids:
        doomed |= {key for key in _scan(client, "rq:*") if ids & set(key.split(":"))}
    state_keys = f"{prefix}:workers:"
    names = {key.removeprefix(state_keys) for key in doomed if key.startswith(state_keys)}
    for key in _scan(client, f"{worker_prefix}*"):
        if client.type(key) == "hash" and f"{prefix}:" in (client.hget(key, "queues") or ""):
            names.add(key.removeprefix(worker_prefix))
    doomed |= {f"{worker_prefix}{name}" for name in names}
    for key in _scan(client, "rq:results:*"):
        latest = client.xrevrange(key, count=1) if client.type(key) == "stream" else []
        if latest and latest[0][1].get("worker_name") in names:
            doomed.add(key)
    workers = {member for member in client.smembers(Worker.redis_workers_keys) if prefix in member}
    workers |= {f"{worker_prefix}{name}" for name in names}
    queues = [member for member in client.smembers(Queue.redis_queues_keys) if prefix in member]
    with client.pipeline() as pipeline:
        if workers:
            pipeline.srem(Worker.redis_workers_keys, *workers)
        if queues:
            pipeline.srem(Queue.redis_queues_keys, *queues)
        ordered = sorted(doomed)
        for start in range(0, len(ordered), SCAN_COUNT):
            pipeline.delete(*ordered[start : start + SCAN_COUNT])
        pipeline.execute()


def _scan(client: redis.Redis, pattern: str) -> list[str]:
    return list(client.scan_iter(match=pattern, count=SCAN_COUNT))


# abandoned jobs: a worker publishes `<prefix>:workers:<name>` with a TTL while it lives and names itself in the
# job it takes; a job still queued or started while that record is gone was abandoned by a dead worker.
def holder_gone(connection: redis.Redis, job: Job, worker_key: Callable[[str], str]) -> bool:
    """True when `job` is held (claimed while queued, or started) by a worker whose record has expired."""
    if job.get_status(refresh=False) not in (JobStatus.STARTED, JobStatus.QUEUED) or not job.worker_name:
        return False
    return not connection.exists(worker_key(job.worker_name))


def retries_of(job: Job) -> int:
    return int((job.meta or {}).get("retries", 0))


def requeue(target: Queue, job: Job) -> None:
    """Put an abandoned job back at the front of its queue for another worker, counting the retry."""
    job.meta["retries"] = retries_of(job) + 1
    job.save_meta()
    with target.connection.pipeline() as pipeline:
        target.started_job_registry.remove_executions(job, pipeline=pipeline)
        job.set_status(JobStatus.QUEUED, pipeline=pipeline)
        pipeline.hset(job.key, "worker_name", "")
        target.push_job_id(job.id, pipeline=pipeline, at_front=True)
        pipeline.execute()
    job.worker_name = None


def fail_abandoned(target: Queue, job: Job, detail: str) -> None:
    """Fail an abandoned job (out of the started registry, into the failed one) and release its dependents."""
    with target.connection.pipeline() as pipeline:
        target.started_job_registry.remove_executions(job, pipeline=pipeline)
        record_job_failure(job, f"abandoned: {detail}", pipeline)
        pipeline.execute()
    target.enqueue_dependents(job, refresh_job_status=False)


@dataclass
class Taken:
    """A job a worker popped from one of its queues; `execution` is rq's record once it is started."""

    job: Job
    queue: Queue
    execution: Any = None

    @property
    def payload(self) -> dict[str, Any]:
        return payload_of(self.job)

    @property
    def kind(self) -> str | None:
        """The kind of a MASENet job (its payload's), or None for a job of any other function."""
        if self.job.func_name != JOB_FUNCTION:
            return None
        return str(self.payload.get("kind", JobKind.IMAGE.value))


class RqWorker(SimpleWorker):
    """The rq side of a worker: rq's worker registry, popping jobs, and recording their outcomes.

    A subclass runs its own loop in `work()` and calls only these methods; rq's dequeue loop is never used.
    """

    def rq_open(self) -> None:
        """Register in rq's worker registry (as rq's own loop does when it starts)."""
        self.register_birth()
        self.set_state(RqWorkerStatus.STARTED)

    def rq_close(self) -> None:
        self.register_death()

    def rq_heartbeat(self) -> None:
        self.heartbeat()

    def rq_busy(self, busy: bool) -> None:
        state = RqWorkerStatus.BUSY if busy else RqWorkerStatus.IDLE
        if self.get_state() != state:
            self.set_state(state)

    def pop(self, name: str, timeout_s: float = 0.0) -> Taken | None:
        """Pop the next job of queue `name`, waiting up to `timeout_s` (0: not at all), claimed for this worker;
        None when none came. A job that expired or was canceled while queued is skipped."""
        target = self.queue_named(name)
        if timeout_s > 0:
            popped = self.connection.blpop([target.key], timeout=timeout_s)
            raw = None if popped is None else popped[1]
        else:
            raw = self.connection.lpop(target.key)
        if raw is None:
            return None
        job = fetch(self.connection, raw.decode() if isinstance(raw, bytes) else str(raw))
        if job is None:
            return None
        claim(self.connection, job, self.name)
        return Taken(job, target)

    def queue_length(self, name: str) -> int:
        return int(self.connection.llen(queue_key(name)))

    def queue_named(self, name: str) -> Queue:
        for known in self.queues:
            if known.name == name:
                return known
        return queue(self.connection, name)

    def start(self, taken: Taken) -> None:
        """Record the job as started (in its queue's started registry) by this worker."""
        taken.execution = self.prepare_execution(taken.job)
        self.prepare_job_execution(taken.job)
        taken.job.started_at = now()

    def succeed(self, taken: Taken, result: Any) -> None:
        """Record the job as finished with `result` (JSON) and release its dependents."""
        if taken.execution is None:
            self.start(taken)
        job = taken.job
        job.ended_at = now()
        job._result = result
        job._status = JobStatus.FINISHED
        self.handle_job_success(
            job=job, queue=taken.queue, started_job_registry=taken.queue.started_job_registry, execution=taken.execution
        )

    def fail(self, taken: Taken, detail: str) -> None:
        """Record the job as failed with `detail` (kept in the failed registry) and release its dependents."""
        if taken.execution is None:
            self.start(taken)
        job = taken.job
        job.ended_at = now()
        job._status = JobStatus.FAILED
        self.handle_job_failure(job=job, queue=taken.queue, exc_string=detail, execution=taken.execution)

    def run_rq_way(self, taken: Taken) -> None:
        """Run a job that is not MASENet's the way rq's SimpleWorker does, in this thread."""
        self.execute_job(taken.job, taken.queue)
