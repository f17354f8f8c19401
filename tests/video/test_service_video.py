"""service.video: probing, job ids, storage, streamed uploads, chunk plans, job state and rq jobs."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from rq import Queue
from rq.job import Job
from rq.job import JobStatus as RqJobStatus
from rq.serializers import JSONSerializer

from service.video import (
    InvalidJobIdError,
    JobStatus,
    JobStorage,
    UploadTooLargeError,
    UploadWriter,
    VideoInfo,
    VideoProbeError,
    add_progress,
    cancel_video_job,
    chunk_rq_id,
    create_job_state,
    enqueue_video_job,
    finalize_rq_id,
    new_job_id,
    plan_chunks,
    probe_video,
    processed_frame_count,
    read_job_state,
    safe_suffix,
    set_status,
    should_stop,
    validate_job_id,
    video_queue_name,
    write_stream,
)
from tests.video.synthetic import write_test_video

INFO = VideoInfo(fps=25.0, width=160, height=128, frames=64, duration_s=2.56, codec="h264")


def test_probe_reads_an_mp4(test_video: Path) -> None:
    info = probe_video(test_video)
    assert info == VideoInfo(fps=25.0, width=160, height=128, frames=64, duration_s=pytest.approx(2.56), codec="h264")


def test_probe_counts_frames_when_the_container_does_not_store_them(tmp_path: Path) -> None:
    info = probe_video(write_test_video(tmp_path / "clip.mkv", frames=30, width=96, height=64))
    assert (info.frames, info.width, info.height) == (30, 96, 64)
    avi = probe_video(write_test_video(tmp_path / "clip.avi", frames=20, codec="mpeg4"))
    assert (avi.frames, avi.codec) == (20, "mpeg4")


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (32, 32), 100).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content",
    [b"", b"this is plain text, not a video" * 20, os.urandom(4096), png_bytes()],
    ids=["empty", "text", "noise", "png"],
)
def test_probe_refuses_non_videos(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "upload.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoProbeError):
        probe_video(path)


def test_probe_refuses_a_truncated_video(tmp_path: Path, test_video: Path) -> None:
    data = test_video.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 3])  # MP4 index (moov) comes last: a cut file has none
    with pytest.raises(VideoProbeError):
        probe_video(path)


def test_job_ids_are_strict() -> None:
    job_id = new_job_id()
    assert validate_job_id(job_id) == job_id and len(job_id) == 32
    for hostile in ["../x", "..", "", job_id.upper(), job_id + "0", job_id[:-1] + "/", "a" * 10_000, f"{job_id}\n"]:
        with pytest.raises(InvalidJobIdError):
            validate_job_id(hostile)
    with pytest.raises(InvalidJobIdError):
        JobStorage("/tmp").job_dir("../../etc")


def test_safe_suffix_keeps_only_known_video_extensions() -> None:
    assert safe_suffix("clip.MP4") == ".mp4"
    assert safe_suffix("../../evil.sh") == ""
    assert safe_suffix(None) == ""


def test_storage_layout_and_removal(tmp_path: Path) -> None:
    storage = JobStorage(tmp_path / "jobs")
    job_id = new_job_id()
    directory = storage.create(job_id)
    assert directory == tmp_path / "jobs" / job_id and (directory / "chunks").is_dir()
    storage.input_path(job_id, ".mp4").write_bytes(b"x")
    assert storage.find_input(job_id).name == "input.mp4"
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


def test_upload_writer_enforces_the_cap_while_writing(tmp_path: Path) -> None:
    path = tmp_path / "upload"
    assert write_stream([b"a" * 10, b"b" * 10], path, max_bytes=20) == 20
    assert path.read_bytes() == b"a" * 10 + b"b" * 10
    second = tmp_path / "big"
    pieces_read = []

    def pieces():
        for index in range(100):
            pieces_read.append(index)
            yield b"c" * 1000

    with pytest.raises(UploadTooLargeError):
        write_stream(pieces(), second, max_bytes=4500)
    assert not second.exists()  # the partial file is gone
    assert len(pieces_read) == 5  # it stopped reading at the piece that crossed the cap
    with pytest.raises(FileExistsError), UploadWriter(path, max_bytes=10):
        pass


def test_chunk_plan_examples() -> None:
    assert plan_chunks(100, 1, 32) == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert plan_chunks(100, 3, 10) == [(0, 30), (30, 60), (60, 90), (90, 100)]
    assert plan_chunks(0, 1, 8) == []
    with pytest.raises(ValueError):
        plan_chunks(10, 0, 8)


@given(st.integers(0, 5000), st.integers(1, 7), st.integers(1, 200))
def test_chunk_plan_covers_every_processed_frame_once(frames_total: int, stride: int, chunk_frames: int) -> None:
    chunks = plan_chunks(frames_total, stride, chunk_frames)
    processed = [index for start, stop in chunks for index in range(start, stop, stride)]
    assert processed == list(range(0, frames_total, stride))
    assert len(processed) == processed_frame_count(frames_total, stride)
    assert all(len(range(start, stop, stride)) <= chunk_frames for start, stop in chunks)
    assert all(start % stride == 0 for start, _ in chunks)


def make_job(connection, prefix: str, job_id: str, chunks: list[tuple[int, int]] | None = None) -> None:
    chunks = chunks if chunks is not None else [(0, 32), (32, 64)]
    create_job_state(
        connection,
        prefix,
        job_id,
        info=INFO,
        params={"conf": 0.25, "frame_stride": 1, "track": True, "annotate": False},
        chunks=chunks,
        frames_total=64,
        input_name="input.mp4",
        ttl_s=600,
    )


def test_job_state_round_trip_and_status_only_moves_forward(redis_connection, prefix: str) -> None:
    job_id = new_job_id()
    make_job(redis_connection, prefix, job_id)
    state = read_job_state(redis_connection, prefix, job_id)
    assert state["status"] == "queued" and state["progress"] == {"frames_done": 0, "frames_total": 64}
    assert state["chunks"] == [(0, 32), (32, 64)] and VideoInfo.from_dict(state["video"]) == INFO
    assert state["started_at"] is None and state["error"] is None
    assert 0 < redis_connection.ttl(f"{prefix}:video:{job_id}") <= 600

    assert set_status(redis_connection, prefix, job_id, JobStatus.STARTED)
    assert not set_status(redis_connection, prefix, job_id, JobStatus.STARTED)
    assert add_progress(redis_connection, prefix, job_id, 8) == 8
    assert set_status(redis_connection, prefix, job_id, JobStatus.FAILED, error="chunk 1 failed")
    assert not set_status(redis_connection, prefix, job_id, JobStatus.FINISHED)
    state = read_job_state(redis_connection, prefix, job_id)
    assert state["status"] == "failed" and state["error"] == "chunk 1 failed"
    assert state["started_at"] and state["ended_at"] and state["progress"]["frames_done"] == 8
    assert should_stop(redis_connection, prefix, job_id)


def test_unknown_jobs_read_as_none_and_stop_work(redis_connection, prefix: str) -> None:
    job_id = new_job_id()
    assert read_job_state(redis_connection, prefix, job_id) is None
    assert should_stop(redis_connection, prefix, job_id)
    assert not set_status(redis_connection, prefix, job_id, JobStatus.STARTED)


def test_enqueue_makes_chunk_jobs_and_a_deferred_finalize(redis_connection, prefix: str) -> None:
    job_id = new_job_id()
    chunks = [(0, 32), (32, 64)]
    make_job(redis_connection, prefix, job_id, chunks)
    enqueue_video_job(redis_connection, prefix, job_id, chunks, job_timeout_s=60, ttl_s=600)
    queue = Queue(video_queue_name(prefix), connection=redis_connection, serializer=JSONSerializer)
    assert queue.job_ids == [chunk_rq_id(job_id, 0), chunk_rq_id(job_id, 1)]
    first = Job.fetch(chunk_rq_id(job_id, 1), connection=redis_connection, serializer=JSONSerializer)
    assert first.args == [{"prefix": prefix, "job_id": job_id, "index": 1, "start": 32, "stop": 64}]
    assert first.meta["kind"] == "video_chunk" and first.func_name == "worker.video.chunk_job"
    finalize = Job.fetch(finalize_rq_id(job_id), connection=redis_connection, serializer=JSONSerializer)
    assert finalize.get_status() == RqJobStatus.DEFERRED
    assert set(finalize.dependency_ids) == {chunk_rq_id(job_id, 0), chunk_rq_id(job_id, 1)}


def test_cancel_drops_waiting_jobs_and_frees_storage(redis_connection, prefix: str, tmp_path: Path) -> None:
    storage = JobStorage(tmp_path)
    job_id = new_job_id()
    storage.create(job_id)
    chunks = [(0, 32), (32, 64)]
    make_job(redis_connection, prefix, job_id, chunks)
    enqueue_video_job(redis_connection, prefix, job_id, chunks, job_timeout_s=60, ttl_s=600)
    assert cancel_video_job(redis_connection, prefix, job_id, storage)
    queue = Queue(video_queue_name(prefix), connection=redis_connection, serializer=JSONSerializer)
    assert queue.job_ids == []
    finalize = Job.fetch(finalize_rq_id(job_id), connection=redis_connection, serializer=JSONSerializer)
    assert finalize.get_status() == RqJobStatus.CANCELED
    assert read_job_state(redis_connection, prefix, job_id)["status"] == "canceled"
    assert not storage.job_dir(job_id).exists()
    assert not cancel_video_job(redis_connection, prefix, new_job_id(), storage)
