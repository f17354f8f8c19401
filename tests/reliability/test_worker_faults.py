"""Workers stopped or killed mid-batch, with real worker processes and the real Redis.

SIGTERM: the worker finishes the batch it is running (its requests get 200), then exits 0.
SIGKILL: the jobs the dead worker held are retried on the other worker, so the request still gets 200 well
within its timeout; with no other worker alive they fail at once with a 500 naming the job and the dead
worker. Either way no job of it stays "started", and the surviving worker keeps answering. A worker killed
in the middle of a video chunk: the chunk runs again on the other worker and the video finishes whole.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from service.app import create_app
from tests.service.helpers import WorkerProcess, make_settings, new_prefix, png_bytes
from tests.synthetic_video import write_test_video

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

IMAGES = 4
TIMEOUT_S = 120.0
HEAVY = {"imgsz": 320}
VIDEO_FRAMES = 144
VIDEO_CHUNK = 48  # a batch of 4 frames at 320 px takes about a second on two CPU cores


def frames(count: int = IMAGES) -> list:
    return [("image", (f"frame-{index}.png", png_bytes(320, 256, seed=index), "image/png")) for index in range(count)]


def wait_until(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def started_jobs(client: redis.Redis, prefix: str) -> list[Job]:
    """The image jobs rq records as started, with their workers."""
    queue = Queue(f"{prefix}:images", connection=client, serializer=JSONSerializer)
    jobs = []
    for job_id in queue.started_job_registry.get_job_ids(cleanup=False):
        job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
        if job.get_status() == "started":
            jobs.append(job)
    return jobs


def post_in_background(client: TestClient, answers: list, timings: list) -> threading.Thread:
    def send() -> None:
        started = time.monotonic()
        answers.append(client.post("/detect", params=HEAVY, files=frames()))
        timings.append(time.monotonic() - started)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_sigterm_mid_batch_finishes_the_batch_then_exits_0(
    redis_client: redis.Redis, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    prefix = new_prefix()
    worker = WorkerProcess(prefix, tiny_checkpoint, tmp_path / "worker.log")
    answers: list[httpx.Response] = []
    timings: list[float] = []
    try:
        worker.start().wait_for(redis_client, "ready")
        with TestClient(create_app(make_settings(prefix, timeout_s=TIMEOUT_S))) as client:
            sender = post_in_background(client, answers, timings)
            wait_until(lambda: started_jobs(redis_client, prefix), 60, "the worker to start the batch")
            assert worker.process is not None
            worker.process.send_signal(signal.SIGTERM)
            sender.join(timeout=TIMEOUT_S + 30)
            code = worker.process.wait(timeout=120)
    finally:
        worker.stop()
    logger.info("SIGTERM mid-batch: %s after %s s, worker exit code %s", answers[:1], timings[:1], code)
    (response,) = answers
    assert response.status_code == 200, response.text
    assert [result["filename"] for result in response.json()["results"]] == [f"frame-{i}.png" for i in range(IMAGES)]
    assert code == 0, worker.log_tail()
    assert started_jobs(redis_client, prefix) == []
    assert worker.state(redis_client) is None  # its readiness record went with it


def kill_the_holder(redis_client: redis.Redis, prefix: str, workers: list[WorkerProcess]) -> tuple[list, WorkerProcess]:
    """SIGKILL the worker that has started the request's batch; returns the held jobs and the victim."""
    held = wait_until(lambda: started_jobs(redis_client, prefix), 60, "a worker to start the batch")
    victim = next(worker for worker in workers if worker.name == held[0].worker_name)
    assert victim.process is not None
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=30)
    return held, victim


def test_sigkill_mid_batch_retries_the_jobs_on_the_other_worker(
    redis_client: redis.Redis, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    prefix = new_prefix()
    workers = [WorkerProcess(prefix, tiny_checkpoint, tmp_path / f"worker-{index}.log") for index in range(2)]
    answers: list[httpx.Response] = []
    timings: list[float] = []
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_for(redis_client, "ready")
        with TestClient(create_app(make_settings(prefix, timeout_s=TIMEOUT_S))) as client:
            sender = post_in_background(client, answers, timings)
            held, victim = kill_the_holder(redis_client, prefix, workers)
            survivor = next(worker for worker in workers if worker is not victim)
            sender.join(timeout=TIMEOUT_S + 30)
            assert not sender.is_alive(), "the request never ended"
            retried = [Job.fetch(job.id, connection=redis_client, serializer=JSONSerializer) for job in held]
            after = client.post("/detect", files=frames(1))
            wait_until(lambda: victim.state(redis_client) is None, 60, "the dead worker's record to expire")
            ready = client.get("/readyz")
    finally:
        for worker in workers:
            worker.stop()
    (response,) = answers
    (elapsed,) = timings
    logger.info("SIGKILL mid-batch, one survivor: %d after %.1f s", response.status_code, elapsed)
    assert response.status_code == 200, response.text
    assert elapsed < TIMEOUT_S, f"the request took {elapsed:.1f} s"
    assert [result["filename"] for result in response.json()["results"]] == [f"frame-{i}.png" for i in range(IMAGES)]
    # The killed batch was retried once, by the survivor (unless the batch ended before the kill landed).
    finished_by = {job.worker_name for job in retried if job.meta.get("retries") == 1}
    assert finished_by <= {survivor.name}, finished_by
    assert started_jobs(redis_client, prefix) == []  # nothing of the dead worker stays "started"
    assert after.status_code == 200, after.text
    assert ready.status_code == 200 and ready.json()["workers"] == [survivor.name]


def test_sigkill_of_the_only_worker_fails_the_request_at_once_naming_the_job(
    redis_client: redis.Redis, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    prefix = new_prefix()
    worker = WorkerProcess(prefix, tiny_checkpoint, tmp_path / "worker.log")
    answers: list[httpx.Response] = []
    timings: list[float] = []
    try:
        worker.start().wait_for(redis_client, "ready")
        with TestClient(create_app(make_settings(prefix, timeout_s=TIMEOUT_S))) as client:
            sender = post_in_background(client, answers, timings)
            held, victim = kill_the_holder(redis_client, prefix, [worker])
            sender.join(timeout=TIMEOUT_S + 30)
            assert not sender.is_alive(), "the request never ended"
    finally:
        worker.stop()
    (response,) = answers
    (elapsed,) = timings
    logger.info("SIGKILL of the only worker: %d after %.1f s: %s", response.status_code, elapsed, response.text[:300])
    if response.status_code == 200:
        pytest.fail("the batch finished before the kill landed; the test could not observe the failure path")
    # Its heartbeat record expires (15 s TTL) and the next check fails the job: far sooner than the timeout.
    assert response.status_code == 500 and elapsed < TIMEOUT_S / 2, (response.status_code, elapsed)
    detail = response.json()["detail"]
    assert any(job.id in detail for job in held) and victim.name in detail and "heartbeats" in detail, detail
    assert started_jobs(redis_client, prefix) == []  # nothing of the dead worker stays "started"


def test_sigkill_mid_video_chunk_retries_the_chunk_and_the_video_finishes(
    redis_client: redis.Redis, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    prefix = new_prefix()
    env = {"MASENET_STORAGE": str(tmp_path / "storage"), "MASENET_VIDEO_CHUNK_FRAMES": str(VIDEO_CHUNK)}
    workers = [WorkerProcess(prefix, tiny_checkpoint, tmp_path / f"worker-{i}.log", **env) for i in range(2)]
    settings = make_settings(prefix, storage=tmp_path / "storage", video_chunk_frames=VIDEO_CHUNK)
    video = write_test_video(tmp_path / "clip.mp4", frames=VIDEO_FRAMES, width=320, height=256)
    chunks = Queue(f"{prefix}:video", connection=redis_client, serializer=JSONSerializer).started_job_registry
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_for(redis_client, "ready")
        with TestClient(create_app(settings)) as client:
            accepted = client.post(
                "/jobs", params={"imgsz": 320}, files={"video": ("clip.mp4", video.read_bytes(), "video/mp4")}
            )
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["job_id"]
            wait_until(lambda: client.get(f"/jobs/{job_id}").json()["progress"]["frames_done"] > 0, 60, "progress")

            def running_chunk() -> tuple[WorkerProcess, str] | None:  # read at kill time: chunks end fast
                for job in Job.fetch_many(chunks.get_job_ids(cleanup=False), redis_client, JSONSerializer):
                    holder = next((worker for worker in workers if job and worker.name == job.worker_name), None)
                    if holder:
                        return holder, job.id
                return None

            victim, chunk_id = wait_until(running_chunk, 60, "a worker holding a chunk")
            assert victim.process is not None
            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait(timeout=30)
            killed_at = time.monotonic()
            final = wait_until(
                lambda: (body := client.get(f"/jobs/{job_id}").json())["status"] in {"finished", "failed"} and body,
                240,
                "the video job to end",
            )
            recovered_s = time.monotonic() - killed_at
            result = client.get(f"/jobs/{job_id}/result")
    finally:
        for worker in workers:
            worker.stop()
    logger.info("video job ended %s %.1f s after the kill", final["status"], recovered_s)
    assert final["status"] == "finished", final
    assert final["progress"] == {"frames_done": VIDEO_FRAMES, "frames_total": VIDEO_FRAMES}  # nothing counted twice
    assert [frame["index"] for frame in result.json()["frames"]] == list(range(VIDEO_FRAMES))
    retried = Job.fetch(chunk_id, connection=redis_client, serializer=JSONSerializer)
    assert retried.meta.get("retries") == 1 and retried.get_status() == "finished"
