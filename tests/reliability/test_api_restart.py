"""The API process killed (SIGKILL) and restarted while a video job runs: the job's state and result survive.

Job state lives in Redis and the chunks run on the workers, so the API holds nothing that a restart can lose.
The API here is a real `masenet serve` process on a free port (not an in-process app), killed without warning
in the middle of the job, then started again on the same port.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.service.helpers import ApiProcess, served
from tests.synthetic_video import write_test_video

pytestmark = pytest.mark.slow

FRAMES = 240
CHUNK_FRAMES = 24
JOB_TIMEOUT_S = 300.0


@pytest.fixture
def stack(tiny_checkpoint: Path, redis_client: redis.Redis, tmp_path: Path) -> Iterator[tuple[ApiProcess, Path]]:
    env = {
        "MASENET_STORAGE": str(tmp_path / "storage"),
        "MASENET_VIDEO_CHUNK_FRAMES": str(CHUNK_FRAMES),
        "MASENET_IMGSZ": "64",
        "MASENET_MAX_BATCH": "4",
    }
    with served(tiny_checkpoint, tmp_path, redis_client, **env) as stack:
        yield stack.api, tmp_path


def status_of(api: ApiProcess, job_id: str) -> dict:
    response = httpx.get(f"{api.url}/jobs/{job_id}", timeout=10.0)
    assert response.status_code == 200, response.text
    return response.json()


def test_video_job_survives_an_api_restart(stack: tuple[ApiProcess, Path]) -> None:
    api, folder = stack
    video = write_test_video(folder / "clip.mp4", frames=FRAMES)
    with video.open("rb") as handle:
        response = httpx.post(
            f"{api.url}/jobs",
            params={"conf": 0.001, "max_det": 3, "annotate": "true"},
            files={"video": ("clip.mp4", handle, "video/mp4")},
            timeout=60.0,
        )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]

    deadline = time.monotonic() + JOB_TIMEOUT_S
    before = status_of(api, job_id)
    while before["progress"]["frames_done"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        before = status_of(api, job_id)
    assert before["status"] == "started" and 0 < before["progress"]["frames_done"] < FRAMES, before

    api.kill()
    api.start()

    after = status_of(api, job_id)
    assert after["created_at"] == before["created_at"] and after["started_at"] == before["started_at"]
    assert after["progress"]["frames_done"] >= before["progress"]["frames_done"]
    while after["status"] not in {"finished", "failed", "canceled"} and time.monotonic() < deadline:
        time.sleep(0.2)
        after = status_of(api, job_id)
    assert after["status"] == "finished", after
    assert after["progress"] == {"frames_done": FRAMES, "frames_total": FRAMES}

    result = httpx.get(f"{api.url}/jobs/{job_id}/result", timeout=30.0)
    assert result.status_code == 200, result.text
    frames = result.json()["frames"]
    assert [frame["index"] for frame in frames] == list(range(FRAMES))
    annotated = httpx.get(f"{api.url}/jobs/{job_id}/video", timeout=30.0)
    assert annotated.status_code == 200 and annotated.content[4:8] == b"ftyp"
