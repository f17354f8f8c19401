"""BatchingWorker as rq runs it (`rq worker -w worker.worker.BatchingWorker --burst`), on the real Redis.

Jobs are queued before the worker starts: image jobs of two input sizes and one video-kind job. The worker
must batch the image jobs, complete each one through rq with a reply for the API, serve the video job only
once the image queue is empty, run jobs without an image handler the rq way, and leave no state behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import redis
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from jobs.contracts import DetectParams, ReplyMessage
from service.queueing import ImageUpload, JobBroker
from tests.service.helpers import REDIS_URL, make_settings, new_prefix, png_bytes

pytestmark = pytest.mark.slow


def test_rq_cli_runs_the_batching_worker(redis_client: redis.Redis, tiny_checkpoint: Path, tmp_path: Path) -> None:
    prefix = new_prefix()
    settings = make_settings(prefix)
    broker = JobBroker(settings)
    video_queue = Queue(settings.video_queue, connection=redis_client, serializer=JSONSerializer)
    video_job = video_queue.enqueue("time.sleep", args=[0], meta={"kind": "video_chunk"})
    small = [ImageUpload(f"s{index}.png", png_bytes(64, 48, seed=index), 64, 48) for index in range(3)]
    large = [ImageUpload("l0.png", png_bytes(96, 64, seed=9), 96, 64)]
    submissions = [broker.enqueue(small, DetectParams(imgsz=64)), broker.enqueue(large, DetectParams(imgsz=128))]

    env = {
        **os.environ,
        "MASENET_QUEUE_PREFIX": prefix,
        "MASENET_WEIGHTS": str(tiny_checkpoint),
        "MASENET_DEVICE": "cpu",
        "MASENET_MAX_DELAY_MS": "20",
        "MASENET_WORKER_METRICS_PORT": "0",
    }
    command = [sys.executable, "-m", "rq.cli", "worker", "-w", "worker.worker.BatchingWorker", "--url", REDIS_URL]
    command += ["--burst", "--name", "cli-worker", settings.image_queue, settings.video_queue]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    image_jobs = [
        Job.fetch(job_id, connection=redis_client, serializer=JSONSerializer)
        for submission in submissions
        for job_id in submission.job_ids
    ]
    assert [job.get_status() for job in image_jobs] == ["finished"] * 4
    video_job = Job.fetch(video_job.id, connection=redis_client, serializer=JSONSerializer)
    assert video_job.get_status() == "finished"  # no image handler for its kind: run the rq way
    assert video_job.started_at > max(job.ended_at for job in image_jobs)  # images first

    for submission, uploads in zip(submissions, (small, large), strict=True):
        raw = redis_client.lrange(submission.reply_key, 0, -1)
        replies = sorted((ReplyMessage.model_validate_json(item) for item in raw), key=lambda reply: reply.index)
        assert [reply.result.filename for reply in replies] == [upload.filename for upload in uploads]
        assert all(reply.failure is None and reply.model.name == "masenet-n" for reply in replies)
        assert redis_client.ttl(submission.reply_key) > 0  # replies expire if nobody reads them
    first_replies = [
        ReplyMessage.model_validate_json(item) for item in redis_client.lrange(submissions[0].reply_key, 0, -1)
    ]
    assert max(reply.result.batch_size for reply in first_replies) > 1  # jobs queued together ran in one batch

    result = image_jobs[0].return_value()
    assert result["filename"] == "s0.png" and result["gradcam"] is False
    stored = json.loads(zlib.decompress(redis_client.hget(f"rq:job:{image_jobs[0].id}", "data")))
    assert stored[0] == "worker.runtime.run_job" and stored[3]["payload"]["filename"] == "s0.png"  # JSON, not pickle
    assert redis_client.get(settings.worker_key("cli-worker")) is None  # the worker record left with the worker
    assert redis_client.keys(f"{prefix}:data:*") == []


def test_flip_views_count_against_the_batch(redis_client: redis.Redis, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """MASENET_MAX_BATCH counts images per forward pass: with flip averaging a frame is four of them."""
    from model.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(tiny_checkpoint)
    flips = save_checkpoint(tmp_path / "flips.safetensors", model, class_names=meta.class_names, imgsz=64, tta="flips")
    prefix = new_prefix()
    broker = JobBroker(make_settings(prefix))
    uploads = [ImageUpload(f"f{index}.png", png_bytes(64, 48, seed=index), 64, 48) for index in range(5)]
    submission = broker.enqueue(uploads, DetectParams(imgsz=64))
    env = {
        **os.environ,
        "MASENET_QUEUE_PREFIX": prefix,
        "MASENET_WEIGHTS": str(flips),
        "MASENET_DEVICE": "cpu",
        "MASENET_MAX_BATCH": "8",
        "MASENET_MAX_DELAY_MS": "20",
        "MASENET_WORKER_METRICS_PORT": "0",
    }
    command = [sys.executable, "-m", "rq.cli", "worker", "-w", "worker.worker.BatchingWorker", "--url", REDIS_URL]
    command += ["--burst", "--name", "flips-worker", f"{prefix}:images"]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    replies = [ReplyMessage.model_validate_json(item) for item in redis_client.lrange(submission.reply_key, 0, -1)]
    assert len(replies) == 5 and all(reply.failure is None and reply.model.tta == "flips" for reply in replies)
    assert max(reply.result.batch_size for reply in replies) == 2  # 8 images per pass: 2 frames and their views
