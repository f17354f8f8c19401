"""Contract tests of jobs.rqueue against the real rq and Redis: what the adapter relies on in rq's internals.

An rq release that renames a key, a registry or a status, or changes how results, failures and dependents are
recorded, fails here before it breaks a worker silently.
"""

from __future__ import annotations

import uuid

import pytest
import redis
import rq
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
from rq.worker import Worker

from jobs import rqueue
from jobs.contracts import JOB_FUNCTION


def new_job(kind: str = "image", **options) -> rqueue.NewJob:
    lifetimes = {"timeout": 60, "result_ttl": 600, "failure_ttl": 600} | options
    return rqueue.NewJob(JOB_FUNCTION, {"kind": kind, "n": 1}, uuid.uuid4().hex, "a test job", **lifetimes)


@pytest.fixture
def worker(redis_connection: redis.Redis, prefix: str) -> rqueue.RqWorker:
    made = rqueue.RqWorker([f"{prefix}:images"], connection=redis_connection, name=f"w-{prefix}")
    made.rq_open()
    yield made
    made.rq_close()


def test_the_tested_rq_minor_version_is_installed() -> None:
    assert rq.__version__.rsplit(".", 1)[0] == rqueue.RQ_TESTED, "pin rq in pyproject.toml and re-run these tests"


def test_enqueue_writes_the_keys_the_adapter_names(redis_connection: redis.Redis, prefix: str) -> None:
    target = rqueue.queue(redis_connection, f"{prefix}:images")
    jobs = [new_job(), new_job()]
    with redis_connection.pipeline() as pipeline:
        rqueue.enqueue(target, jobs, pipeline=pipeline)
        pipeline.execute()
    key = rqueue.queue_key(f"{prefix}:images")
    assert [item.decode() for item in redis_connection.lrange(key, 0, -1)] == [job.job_id for job in jobs]
    stored = rqueue.fetch(redis_connection, jobs[0].job_id)
    assert stored is not None and stored.key == rqueue.job_keys(jobs[0].job_id)[0]
    assert rqueue.payload_of(stored) == {"kind": "image", "n": 1} and stored.get_status() == "queued"
    assert rqueue.fetch(redis_connection, "no-such-job") is None


def test_every_key_rq_makes_for_a_dependent_job_is_named(redis_connection: redis.Redis, prefix: str) -> None:
    target = rqueue.queue(redis_connection, f"{prefix}:video")
    parents = rqueue.enqueue(target, [new_job("video_chunk"), new_job("video_chunk")])
    child = rqueue.enqueue_after(target, new_job("video_finalize"), parents)
    assert child.get_status() == "deferred"
    named = {name for job in [*parents, child] for name in rqueue.job_keys(job.id)}
    made = {key.decode() for job in [*parents, child] for key in redis_connection.scan_iter(match=f"*{job.id}*")}
    assert made and made <= named, f"keys rq made that job_keys does not name: {made - named}"


def test_a_worker_pops_claims_starts_and_finishes_a_job(
    redis_connection: redis.Redis, prefix: str, worker: rqueue.RqWorker
) -> None:
    target = rqueue.queue(redis_connection, f"{prefix}:images")
    job = new_job()
    rqueue.enqueue(target, [job])
    assert Worker.find_by_key(worker.key, connection=redis_connection) is not None  # in rq's worker registry
    taken = worker.pop(f"{prefix}:images", timeout_s=1)
    assert taken is not None and taken.kind == "image" and worker.queue_length(f"{prefix}:images") == 0
    assert redis_connection.hget(taken.job.key, "worker_name").decode() == worker.name  # claimed before it starts
    worker.start(taken)
    assert Job.fetch(job.job_id, connection=redis_connection).get_status() == "started"
    assert job.job_id in StartedJobRegistry(target.name, connection=redis_connection).get_job_ids()
    worker.succeed(taken, {"answer": 42})
    stored = rqueue.fetch(redis_connection, job.job_id)
    assert stored.get_status() == "finished" and stored.return_value() == {"answer": 42}
    assert job.job_id in FinishedJobRegistry(target.name, connection=redis_connection).get_job_ids()
    assert job.job_id not in StartedJobRegistry(target.name, connection=redis_connection).get_job_ids()
    assert worker.pop(f"{prefix}:images") is None


def test_a_failure_is_kept_and_releases_the_dependents(
    redis_connection: redis.Redis, prefix: str, worker: rqueue.RqWorker
) -> None:
    name = f"{prefix}:images"
    target = rqueue.queue(redis_connection, name)
    parents = rqueue.enqueue(target, [new_job(), new_job()])
    child = rqueue.enqueue_after(target, new_job("video_finalize"), parents)
    first, second = worker.pop(name), worker.pop(name)
    worker.succeed(first, {"ok": True})
    assert rqueue.fetch(redis_connection, child.id).get_status() == "deferred"
    worker.fail(second, "media: the image is not a PNG")  # never started: failing it starts it first
    failed = rqueue.fetch(redis_connection, second.job.id)
    assert failed.get_status() == "failed" and "not a PNG" in failed.latest_result().exc_string
    assert second.job.id in FailedJobRegistry(name, connection=redis_connection).get_job_ids()
    assert rqueue.fetch(redis_connection, child.id).get_status() == "queued"  # failures allowed
    assert worker.pop(name).job.id == child.id


def test_cancel_takes_a_waiting_job_out_of_its_queue_only(
    redis_connection: redis.Redis, prefix: str, worker: rqueue.RqWorker
) -> None:
    name = f"{prefix}:images"
    target = rqueue.queue(redis_connection, name)
    waiting, running = new_job(), new_job()
    rqueue.enqueue(target, [running, waiting])
    worker.start(worker.pop(name))
    assert rqueue.cancel_waiting(redis_connection, waiting.job_id, expire_s=30)
    assert worker.queue_length(name) == 0 and 0 < redis_connection.ttl(rqueue.job_keys(waiting.job_id)[0]) <= 30
    assert not rqueue.cancel_waiting(redis_connection, running.job_id)
    assert not rqueue.cancel_waiting(redis_connection, "no-such-job")
    assert rqueue.canceled(redis_connection, [waiting.job_id, running.job_id]) == [True, False]


def test_an_abandoned_job_is_retried_then_failed(redis_connection: redis.Redis, prefix: str) -> None:
    name = f"{prefix}:images"
    target = rqueue.queue(redis_connection, name)
    dead = rqueue.RqWorker([name], connection=redis_connection, name=f"dead-{prefix}")
    job = new_job()
    rqueue.enqueue(target, [job])
    taken = dead.pop(name)
    dead.start(taken)

    def worker_key(worker_name: str) -> str:
        return f"{prefix}:workers:{worker_name}"

    stored = rqueue.fetch(redis_connection, job.job_id)
    assert rqueue.holder_gone(redis_connection, stored, worker_key)  # no heartbeat record: the holder is dead
    redis_connection.set(worker_key(dead.name), "alive")
    assert not rqueue.holder_gone(redis_connection, stored, worker_key)
    rqueue.requeue(target, stored)
    assert rqueue.retries_of(rqueue.fetch(redis_connection, job.job_id)) == 1
    assert rqueue.fetch(redis_connection, job.job_id).get_status() == "queued"
    assert redis_connection.lindex(rqueue.queue_key(name), 0).decode() == job.job_id
    assert job.job_id not in rqueue.started_job_ids(target)
    again = dead.pop(name)
    dead.start(again)
    rqueue.fail_abandoned(target, rqueue.fetch(redis_connection, job.job_id), "worker vanished")
    assert rqueue.fetch(redis_connection, job.job_id).get_status() == "failed"
    assert job.job_id not in rqueue.started_job_ids(target)


def test_a_job_of_another_function_runs_the_rq_way(
    redis_connection: redis.Redis, prefix: str, worker: rqueue.RqWorker
) -> None:
    name = f"{prefix}:images"
    target = rqueue.queue(redis_connection, name)
    job = target.enqueue("operator.add", 2, 3)
    taken = worker.pop(name)
    assert taken.kind is None
    worker.run_rq_way(taken)
    assert rqueue.fetch(redis_connection, job.id).return_value() == 5
