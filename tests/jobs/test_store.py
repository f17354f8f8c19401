"""jobs.store: the storage layout, the job state machine in Redis, queueing and cancel."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rq import Queue
from rq.job import Job
from rq.job import JobStatus as RqJobStatus
from rq.serializers import JSONSerializer

from jobs.contracts import JOB_FUNCTION
from jobs.store import JobStorage, VideoJobStore, chunk_rq_id, finalize_rq_id
from jobs.video import VideoInfo, VideoParams, VideoStatus, new_job_id

INFO = VideoInfo(fps=25.0, width=160, height=128, frames=64, duration_s=2.56, codec="h264")


def test_storage_layout_and_removal(tmp_path: Path) -> None:
    storage = JobStorage(tmp_path / "jobs")
    job_id = new_job_id()
    directory = storage.create(job_id)
    assert directory == tmp_path / "jobs" / job_id and (directory / "chunks").is_dir()
    assert storage.input_path(job_id, ".mp4") == directory / "input.mp4"
    assert storage.chunk_path(job_id, 3).name == "00003.json"
    assert storage.remove(job_id) and not directory.exists()
    assert not storage.remove(job_id)


def test_cleanup_removes_only_expired_job_directories(tmp_path: Path) -> None:
    storage = JobStorage(tmp_path)
    old_id, fresh_id = new_job_id(), new_job_id()
    for job_id in (old_id, fresh_id):
        storage.create(job_id)
        storage.result_path(job_id).write_text("{}")
    foreign = tmp_path / "keep-me"
    foreign.mkdir()
    long_ago = time.time() - 3600
    for path in (storage.job_dir(old_id), storage.job_dir(old_id) / "chunks", storage.result_path(old_id), foreign):
        os.utime(path, (long_ago, long_ago))
    assert storage.cleanup_expired(ttl_s=600) == [old_id]
    assert not storage.job_dir(old_id).exists() and storage.job_dir(fresh_id).exists() and foreign.exists()


def make_store(connection, prefix: str, tmp_path: Path) -> VideoJobStore:
    return VideoJobStore(connection, prefix, JobStorage(tmp_path), ttl_s=600)


def make_job(store: VideoJobStore, job_id: str, chunks: list[tuple[int, int]] | None = None) -> None:
    chunks = chunks if chunks is not None else [(0, 32), (32, 64)]
    params = VideoParams(conf=0.3, frame_stride=1)
    store.create(job_id, info=INFO, params=params, chunks=chunks, frames_total=64, input_name="input.mp4")


def test_job_state_round_trip_and_status_only_moves_forward(redis_connection, prefix: str, tmp_path: Path) -> None:
    store = make_store(redis_connection, prefix, tmp_path)
    job_id = new_job_id()
    make_job(store, job_id)
    state = store.read(job_id)
    assert state.status == VideoStatus.QUEUED and state.progress.model_dump() == {"frames_done": 0, "frames_total": 64}
    assert state.chunks == [(0, 32), (32, 64)] and state.video == INFO and state.params.conf == 0.3
    assert state.started_at is None and state.error is None
    assert 0 < redis_connection.ttl(f"{prefix}:video:{job_id}") <= 600

    assert store.set_status(job_id, VideoStatus.STARTED)
    assert not store.set_status(job_id, VideoStatus.STARTED)
    assert store.add_progress(job_id, 8, chunk=0) == 8
    assert store.add_progress(job_id, 5, chunk=1) == 13
    assert store.take_back_progress(job_id, 1) == 5
    assert store.set_status(job_id, VideoStatus.FAILED, error="chunk 1 failed")
    assert not store.set_status(job_id, VideoStatus.FINISHED)
    state = store.read(job_id)
    assert state.status == VideoStatus.FAILED and state.error == "chunk 1 failed"
    assert state.started_at and state.ended_at and state.progress.frames_done == 8
    assert store.should_stop(job_id)
    assert store.outcomes() == {"accepted": 1, "failed": 1}  # each job's final status counted once


def test_unknown_jobs_read_as_none_and_stop_work(redis_connection, prefix: str, tmp_path: Path) -> None:
    store = make_store(redis_connection, prefix, tmp_path)
    job_id = new_job_id()
    assert store.read(job_id) is None
    assert store.should_stop(job_id)
    assert not store.set_status(job_id, VideoStatus.STARTED)
    assert store.add_progress(job_id, 8, chunk=0) == -1 and not redis_connection.exists(store.key(job_id))


def test_enqueue_makes_chunk_jobs_and_a_deferred_finalize(redis_connection, prefix: str, tmp_path: Path) -> None:
    store = make_store(redis_connection, prefix, tmp_path)
    job_id = new_job_id()
    chunks = [(0, 32), (32, 64)]
    make_job(store, job_id, chunks)
    store.enqueue(job_id, chunks, job_timeout_s=60)
    queue = Queue(store.queue_name, connection=redis_connection, serializer=JSONSerializer)
    assert queue.job_ids == [chunk_rq_id(job_id, 0), chunk_rq_id(job_id, 1)]
    second = Job.fetch(chunk_rq_id(job_id, 1), connection=redis_connection, serializer=JSONSerializer)
    assert second.kwargs == {
        "payload": {"kind": "video_chunk", "prefix": prefix, "job_id": job_id, "index": 1, "start": 32, "stop": 64}
    }
    assert second.func_name == JOB_FUNCTION and second.timeout == 60
    finalize = Job.fetch(finalize_rq_id(job_id), connection=redis_connection, serializer=JSONSerializer)
    assert finalize.get_status() == RqJobStatus.DEFERRED
    assert finalize.kwargs["payload"]["kind"] == "video_finalize"
    assert set(finalize.dependency_ids) == {chunk_rq_id(job_id, 0), chunk_rq_id(job_id, 1)}


def test_cancel_drops_waiting_jobs_frees_storage_and_leaves_no_key_without_expiry(
    redis_connection, prefix: str, tmp_path: Path
) -> None:
    store = make_store(redis_connection, prefix, tmp_path)
    job_id = new_job_id()
    store.storage.create(job_id)
    chunks = [(0, 32), (32, 64)]
    make_job(store, job_id, chunks)
    store.enqueue(job_id, chunks, job_timeout_s=60)
    assert store.cancel(job_id)
    queue = Queue(store.queue_name, connection=redis_connection, serializer=JSONSerializer)
    assert queue.job_ids == []
    finalize = Job.fetch(finalize_rq_id(job_id), connection=redis_connection, serializer=JSONSerializer)
    assert finalize.get_status() == RqJobStatus.CANCELED
    assert store.read(job_id).status == VideoStatus.CANCELED
    assert not store.storage.job_dir(job_id).exists()
    assert not store.cancel(new_job_id())
    keys = [key.decode() for key in redis_connection.scan_iter(f"*{job_id}*")]
    assert keys and all(redis_connection.ttl(key) > 0 for key in keys), {key: redis_connection.ttl(key) for key in keys}
