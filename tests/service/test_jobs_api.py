"""The video job API against the real Redis and two real `masenet worker` processes (tiny random-init model).

A random model detects nothing meaningful, so these tests check structure, progress, cancel, refusals
and that two workers share one video; detection positions and track stability across chunk borders are
checked in-process with a deterministic detector (test_worker_video.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from rq import Queue
from rq.serializers import JSONSerializer

from jobs.settings import Settings
from jobs.store import JobStorage
from jobs.video import VideoJobResult
from service.app import create_app
from service.video import probe_video
from tests.conftest import REDIS_URL
from tests.service.helpers import WorkerProcess, make_settings, metric_value
from tests.synthetic_video import write_test_video

pytestmark = pytest.mark.slow

PREFIX = f"masenet-test-jobs-{uuid.uuid4().hex[:8]}"
CHUNK_FRAMES = 16


@pytest.fixture(scope="module")
def module_redis() -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(REDIS_URL)
    connection.ping()
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("storage")


@pytest.fixture(scope="module")
def settings(storage: Path) -> Settings:
    return make_settings(
        PREFIX,
        redis_url=REDIS_URL,
        storage=storage,
        video_chunk_frames=CHUNK_FRAMES,
        max_video_bytes=2_000_000,
        max_video_seconds=30,
        max_video_pixels=320 * 256,
    )


@pytest.fixture(scope="module")
def workers(
    module_redis: redis.Redis, random_checkpoint: Path, storage: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[WorkerProcess]]:
    logs = tmp_path_factory.mktemp("logs")
    env = {
        "MASENET_REDIS_URL": REDIS_URL,
        "MASENET_STORAGE": str(storage),
        "MASENET_MAX_BATCH": "4",
        "OMP_NUM_THREADS": "1",
    }
    processes = [WorkerProcess(PREFIX, random_checkpoint, logs / f"worker-{i}.log", **env).start() for i in range(2)]
    try:
        for process in processes:
            process.wait_for(module_redis, "ready")
        yield processes
    finally:
        for process in processes:
            process.stop()


@pytest.fixture(scope="module")
def client(settings: Settings, workers: list[WorkerProcess]) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    return {
        "short": write_test_video(folder / "short.mp4", frames=96),
        "long": write_test_video(folder / "long.mp4", frames=400),
        "large": write_test_video(folder / "large.mp4", frames=8, width=352, height=288),
    }


def submit(client: TestClient, video: Path, **params: object):
    return client.post("/jobs", params=params, files={"video": (video.name, video.read_bytes(), "video/mp4")})


def poll(client: TestClient, job_id: str, until: set[str], timeout_s: float = 240.0) -> list[dict]:
    """Every status answer until the job reaches one of `until`."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        seen.append(response.json())
        if seen[-1]["status"] in until:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {until}: last {seen[-1]}")


def test_job_runs_to_a_result_with_rising_progress_split_over_two_workers(
    client: TestClient, videos, workers, module_redis
) -> None:
    response = submit(client, videos["short"], conf=0.001, max_det=3, annotate=True, frame_stride=1)
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"job_id", "status_url"} and body["status_url"] == f"/jobs/{body['job_id']}"
    job_id = body["job_id"]

    early = client.get(f"/jobs/{job_id}/result")
    states = poll(client, job_id, {"finished", "failed", "canceled"})
    final = states[-1]
    assert final["status"] == "finished", final
    assert set(final) == {"job_id", "status", "progress", "error", "created_at", "started_at", "ended_at"}
    assert final["progress"] == {"frames_done": 96, "frames_total": 96}
    assert final["created_at"] <= final["started_at"] <= final["ended_at"]
    done = [state["progress"]["frames_done"] for state in states]
    assert done == sorted(done), "progress never goes back"
    assert any(0 < value < 96 for value in done), f"no intermediate progress seen: {sorted(set(done))}"
    if early.status_code != 200:
        assert early.status_code == 409 and "poll GET /jobs/" in early.json()["detail"]

    result = client.get(f"/jobs/{job_id}/result")
    assert result.status_code == 200
    payload = result.json()
    assert payload["video"] == {"fps": 25.0, "width": 160, "height": 128, "frames": 96}
    assert [frame["index"] for frame in payload["frames"]] == list(range(96))
    assert all(frame["time_s"] == pytest.approx(frame["index"] / 25) for frame in payload["frames"])
    detections = [detection for frame in payload["frames"] for detection in frame["detections"]]
    assert detections and all(len(frame["detections"]) <= 3 for frame in payload["frames"])
    assert set(detections[0]) == {"box", "score", "class_id", "class_name", "track_id"}
    assert set(payload) == {"video", "frames"} and VideoJobResult.model_validate(payload)  # the documented model
    storage = JobStorage(client.app.state.settings.storage)
    chunk_workers = {storage.read_chunk(job_id, index).worker for index in range(96 // CHUNK_FRAMES)}
    assert chunk_workers == {process.name for process in workers}, "both workers took chunks of the one video"

    video = client.get(f"/jobs/{job_id}/video")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    path = Path(client.app.state.settings.storage) / "annotated-copy.mp4"
    path.write_bytes(video.content)
    assert probe_video(path).frames == 96

    assert_every_key_expires(module_redis, job_id)
    metrics = client.get("/metrics").text
    assert metric_value(metrics, 'masenet_video_jobs_total{status="accepted"}') >= 1
    assert metric_value(metrics, 'masenet_video_jobs_total{status="finished"}') == 1


def test_state_survives_an_api_restart(client: TestClient, settings: Settings, videos) -> None:
    job_id = submit(client, videos["short"], frame_stride=4).json()["job_id"]
    poll(client, job_id, {"finished"})
    with TestClient(create_app(settings)) as restarted:
        state = restarted.get(f"/jobs/{job_id}").json()
        assert state["status"] == "finished" and state["progress"]["frames_total"] == 24
        assert len(restarted.get(f"/jobs/{job_id}/result").json()["frames"]) == 24
        assert restarted.get(f"/jobs/{job_id}/video").status_code == 409  # not asked for: says why


def test_cancel_stops_work_and_frees_storage(client: TestClient, settings: Settings, videos, module_redis) -> None:
    job_id = submit(client, videos["long"]).json()["job_id"]
    poll(client, job_id, {"started"})
    deleted = client.delete(f"/jobs/{job_id}")
    assert deleted.status_code == 200 and deleted.json()["status"] == "canceled"
    assert not (Path(settings.storage) / job_id).exists()
    queue = Queue(f"{PREFIX}:video", connection=module_redis, serializer=JSONSerializer)
    assert not [rq_id for rq_id in queue.job_ids if rq_id.startswith(job_id)]
    time.sleep(3.0)  # running chunks notice the cancel at their next batch
    before = client.get(f"/jobs/{job_id}").json()["progress"]["frames_done"]
    time.sleep(2.0)
    after = client.get(f"/jobs/{job_id}").json()
    assert after["status"] == "canceled" and after["progress"]["frames_done"] == before < 400
    assert client.get(f"/jobs/{job_id}/result").status_code == 409
    assert not (Path(settings.storage) / job_id).exists(), "a late chunk must not recreate the job folder"
    assert client.delete("/jobs/" + uuid.uuid4().hex).status_code == 404
    assert_every_key_expires(module_redis, job_id)


def assert_every_key_expires(connection: redis.Redis, job_id: str) -> None:
    """No Redis key of an ended job (its state, rq jobs, dependents and dependencies) lives forever."""
    keys = {key.decode(): connection.ttl(key) for key in connection.scan_iter(f"*{job_id}*")}
    assert keys and all(ttl > 0 for ttl in keys.values()), keys


def test_a_video_too_small_to_annotate_is_refused_at_upload(client: TestClient, tmp_path: Path) -> None:
    tiny = write_test_video(tmp_path / "tiny.mp4", frames=4, width=2, height=2, targets=())
    response = submit(client, tiny, annotate=True)
    assert response.status_code == 422 and "at least 16 pixels" in response.json()["detail"], response.text


@pytest.mark.parametrize("kind", ["text", "truncated", "empty"])
def test_non_videos_are_refused_at_once(client: TestClient, settings: Settings, videos, kind: str) -> None:
    data = {
        "text": b"not a video at all\n" * 100,
        "truncated": videos["short"].read_bytes()[:5000],
        "empty": b"",
    }[kind]
    before = set(Path(settings.storage).iterdir())
    response = client.post("/jobs", files={"video": ("clip.mp4", data, "video/mp4")})
    assert response.status_code in (415, 422), response.text
    assert "video" in response.json()["detail"]
    assert set(Path(settings.storage).iterdir()) == before, "a refused upload leaves no files"


def test_limits_answer_413_with_the_setting_to_change(client: TestClient, settings: Settings, videos) -> None:
    pixels = submit(client, videos["large"])
    assert pixels.status_code == 413 and "MASENET_MAX_VIDEO_PIXELS" in pixels.json()["detail"]
    with TestClient(create_app(settings.model_copy(update={"max_video_seconds": 1.0}))) as strict:
        duration = submit(strict, videos["short"])
        assert duration.status_code == 413 and "MASENET_MAX_VIDEO_SECONDS" in duration.json()["detail"]


def test_resize_and_view_parameters_are_checked_before_the_upload(client: TestClient, videos) -> None:
    both = submit(client, videos["short"], imgsz=64, pixel_scale=1.0)
    assert both.status_code == 422 and "not both" in both.json()["detail"]
    for params in ({"tta": "spin"}, {"pixel_scale": 0}, {"pixel_scale": 9}):
        assert submit(client, videos["short"], **params).status_code == 422, params


def test_a_video_over_the_input_budget_is_413_at_upload(client: TestClient, settings: Settings, videos) -> None:
    before = set(Path(settings.storage).iterdir())
    with TestClient(create_app(settings.model_copy(update={"max_input_pixels": 1024}))) as strict:
        response = submit(strict, videos["short"])
    assert response.status_code == 413, response.text
    assert "the video's frames" in response.json()["detail"] and "MASENET_MAX_INPUT_PIXELS" in response.json()["detail"]
    assert set(Path(settings.storage).iterdir()) == before, "a refused upload leaves no files"


def test_upload_cap_is_enforced_while_streaming(client: TestClient, settings: Settings) -> None:
    boundary = "masenetboundary"

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="big.mp4"\r\n'
            "Content-Type: video/mp4\r\n\r\n"
        ).encode()
        for _ in range(200):  # 200 x 64 KiB = 12.5 MiB, far above the 2 MB cap
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    before = set(Path(settings.storage).iterdir())
    response = client.post(
        "/jobs", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert response.status_code == 413 and "MASENET_MAX_VIDEO_BYTES" in response.json()["detail"]
    assert set(Path(settings.storage).iterdir()) == before


@pytest.mark.parametrize("job_id", ["..%2F..%2Fetc", "x" * 500, "0" * 31, "G" * 32])
def test_malformed_and_unknown_ids_are_404(client: TestClient, job_id: str) -> None:
    for suffix in ("", "/result", "/video"):
        response = client.get(f"/jobs/{job_id}{suffix}")
        assert response.status_code == 404 and "detail" in response.json()
    assert client.get(f"/jobs/{uuid.uuid4().hex}").status_code == 404
