"""What the API answers when things go wrong: no worker, a worker failure, a model that does not load,
Redis down. Also: the API process never imports torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
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
from tests.service.helpers import REDIS_URL, WorkerProcess, make_settings, metric_value, new_prefix, png_bytes
from tools.launch import free_port

pytestmark = pytest.mark.slow


def image_files() -> list:
    return [("image", ("frame.png", png_bytes(64, 48), "image/png"))]


def wait_until(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_no_worker_means_not_ready_and_a_timeout_that_cleans_up(redis_client: redis.Redis) -> None:
    prefix = new_prefix()
    with TestClient(create_app(make_settings(prefix, timeout_s=1.0))) as client:
        ready = client.get("/readyz")
        started = time.monotonic()
        response = client.post("/detect", files=image_files() * 2)
        elapsed = time.monotonic() - started
        metrics = client.get("/metrics").text
    assert ready.status_code == 503
    assert "no live worker" in ready.json()["detail"]
    assert response.status_code == 504
    assert "MASENET_TIMEOUT_S" in response.json()["detail"]
    assert 1.0 <= elapsed < 10.0
    queue = Queue(f"{prefix}:images", connection=redis_client, serializer=JSONSerializer)
    assert queue.count == 0  # no orphan work left for a worker that starts later
    assert len(queue.canceled_job_registry.get_job_ids()) == 2
    assert redis_client.keys(f"{prefix}:data:*") == []
    assert redis_client.keys(f"{prefix}:reply:*") == []
    assert metric_value(metrics, 'masenet_rejected_requests_total{reason="timeout"}') == 1.0


def test_worker_failure_is_500_naming_the_job(redis_client: redis.Redis, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The image bytes vanish before the worker takes the job (as after a Redis eviction): an internal failure."""
    prefix = new_prefix()
    settings = make_settings(prefix, timeout_s=120.0)
    worker = WorkerProcess(prefix, tiny_checkpoint, tmp_path / "worker.log")
    answers: list[httpx.Response] = []
    with TestClient(create_app(settings)) as client:
        sender = threading.Thread(target=lambda: answers.append(client.post("/detect", files=image_files())))
        sender.start()
        queue_key = f"rq:queue:{prefix}:images"
        wait_until(lambda: redis_client.llen(queue_key) == 1, 30, "the job to be queued")
        job_id = redis_client.lindex(queue_key, 0).decode()
        assert redis_client.delete(f"{prefix}:data:{job_id}") == 1
        try:
            worker.start().wait_for(redis_client, "ready")
            sender.join(timeout=120)
            ready = client.get("/readyz")
        finally:
            worker.stop()
    (response,) = answers
    assert response.status_code == 500
    detail = response.json()["detail"]
    assert job_id in detail and "expired or were removed" in detail
    assert ready.status_code == 200 and ready.json()["workers"] == [worker.name]
    job = Job.fetch(job_id, connection=redis_client, serializer=JSONSerializer)
    assert job.get_status() == "failed"
    assert job.latest_result().exc_string.startswith("internal:")
    queue = Queue(f"{prefix}:images", connection=redis_client, serializer=JSONSerializer)
    assert job_id in queue.failed_job_registry.get_job_ids()


def test_model_that_fails_to_load_is_reported(redis_client: redis.Redis, tmp_path: Path) -> None:
    prefix = new_prefix()
    worker = WorkerProcess(prefix, tmp_path / "missing.safetensors", tmp_path / "worker.log")
    try:
        state = worker.start().wait_for(redis_client, "failed")
        metrics = httpx.get(worker.metrics_url(redis_client)).text
        with TestClient(create_app(make_settings(prefix))) as client:
            ready = client.get("/readyz")
            models = client.get("/models")
        assert worker.process is not None and worker.process.poll() is None  # stays up, idle, taking no jobs
    finally:
        code = worker.stop()
    assert "missing.safetensors" in state["error"]
    assert metric_value(metrics, "masenet_worker_up") == 0.0
    assert ready.status_code == 503
    assert "failed to load" in ready.json()["detail"] and "missing.safetensors" in ready.json()["detail"]
    assert models.json() == {"models": []}
    assert code == 1
    assert redis_client.get(f"{prefix}:workers:{worker.name}") is None  # the record goes with the worker


def test_redis_down_is_503(redis_client: redis.Redis) -> None:
    closed = f"redis://:secret@127.0.0.1:{free_port()}/0"
    with TestClient(create_app(make_settings(new_prefix(), redis_url=closed))) as client:
        response = client.post("/detect", files=image_files())
        ready = client.get("/readyz")
        metrics = client.get("/metrics")
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert "unreachable" in response.json()["detail"] and "MASENET_REDIS_URL" in response.json()["detail"]
    assert "secret" not in response.json()["detail"]
    assert ready.status_code == 503
    assert metrics.status_code == 200  # a metrics failure never fails the scrape
    assert metric_value(metrics.text, 'masenet_rejected_requests_total{reason="unavailable"}') == 1.0


def test_api_process_never_imports_torch(redis_client: redis.Redis) -> None:
    script = textwrap.dedent(
        f"""
        import json, sys
        from fastapi.testclient import TestClient
        from service.app import create_app
        from jobs.settings import Settings

        settings = Settings(redis_url={REDIS_URL!r}, queue_prefix={new_prefix()!r}, timeout_s=0.5)
        with TestClient(create_app(settings)) as client:
            files = [("image", ("a.png", {png_bytes(32, 32)!r}, "image/png"))]
            statuses = [client.post("/detect", files=files).status_code, client.get("/readyz").status_code]
            statuses.append(client.get("/metrics").status_code)
        print(json.dumps({{"torch": "torch" in sys.modules, "statuses": statuses}}))
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report == {"torch": False, "statuses": [504, 503, 200]}
