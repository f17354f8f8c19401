"""Images and a video share one worker: frames are answered while the video runs, and the video is never starved.

One real `masenet worker` process (tiny random-init model) runs a long video while a client sends /detect
requests one after another, with a long linger window. Every frame must be answered while the video is still
running, and the video must keep advancing between them: the scheduling loop guarantees a waiting video its
share of the device (worker/schedule.py), however eagerly a client sends frames. (That the loop lingers for a
client's next frame once the video had its share is tested with a fake clock in test_schedule.py.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from tests.conftest import REDIS_URL
from tests.service.helpers import WorkerProcess, make_settings, new_prefix, png_bytes
from tests.synthetic_video import write_test_video

pytestmark = pytest.mark.slow

LINGER_MS = 3000  # far above a request's round trip in-process, so the test does not depend on timing
FRAMES = 600


@pytest.fixture()
def stack(
    redis_connection: redis.Redis, random_checkpoint: Path, tmp_path: Path
) -> Iterator[tuple[TestClient, WorkerProcess]]:
    prefix = new_prefix()
    storage = tmp_path / "storage"
    env = {
        "MASENET_REDIS_URL": REDIS_URL,
        "MASENET_STORAGE": str(storage),
        "MASENET_MAX_BATCH": "1",
        "MASENET_INTERACTIVE_LINGER_MS": str(LINGER_MS),
        "OMP_NUM_THREADS": "1",
    }
    worker = WorkerProcess(prefix, random_checkpoint, tmp_path / "worker.log", **env).start()
    try:
        worker.wait_for(redis_connection, "ready")
        settings = make_settings(prefix, redis_url=REDIS_URL, storage=storage, max_video_seconds=60)
        with TestClient(create_app(settings)) as client:
            yield client, worker
    finally:
        worker.stop()


def frames_done(client: TestClient, job_id: str) -> tuple[str, int]:
    state = client.get(f"/jobs/{job_id}").json()
    return state["status"], state["progress"]["frames_done"]


def test_images_are_served_mid_video_and_the_video_is_never_starved(
    stack: tuple[TestClient, WorkerProcess], tmp_path: Path
) -> None:
    client, worker = stack
    video = write_test_video(tmp_path / "long.mp4", frames=FRAMES)
    response = client.post("/jobs", files={"video": ("long.mp4", video.read_bytes(), "video/mp4")})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    deadline = time.monotonic() + 120
    while frames_done(client, job_id)[1] == 0:
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.05)

    seen = []
    for seed in range(12):
        answer = client.post("/detect", files={"image": ("frame.png", png_bytes(seed=seed), "image/png")})
        assert answer.status_code == 200, answer.text
        seen.append(frames_done(client, job_id))
    statuses, progress = zip(*seen, strict=True)
    assert set(statuses) == {"started"}, f"images must be served while the video runs: {seen}"
    assert 0 < progress[0] < progress[-1] < FRAMES, f"the video must advance while a client sends frames: {progress}"

    deadline = time.monotonic() + 240
    while frames_done(client, job_id)[0] != "finished":
        assert time.monotonic() < deadline, f"the video did not resume after the linger: {worker.log_tail()}"
        time.sleep(0.2)
    assert frames_done(client, job_id)[1] == FRAMES
