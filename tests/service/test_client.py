"""The Python client (`service.client`) and its commands against the real API, Redis, a real worker and a fake
camera; its retry and event parsing also against scripted HTTP answers (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from jobs.streams import FrameEvent, StatusEvent
from jobs.video import VideoStatus
from model.checkpoint import default_weights_path
from service.client import ApiError, AsyncClient, Client, EventParser, JobFailed, image_part, parse_events
from tests.service.helpers import REDIS_URL, png_bytes, served
from tests.synthetic_video import write_test_video
from tools.cameras import CameraScene, MjpegCamera
from tools.launch import child_env, masenet_command

# ------------------------------------------------------------------------------- without a service


def scripted(*answers: httpx.Response) -> tuple[Client, list[httpx.Request]]:
    sent: list[httpx.Request] = []
    queue = list(answers)

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return queue.pop(0)

    return Client("http://service", retries=2, transport=httpx.MockTransport(answer)), sent


def test_busy_answers_are_retried_after_the_time_asked() -> None:
    busy = httpx.Response(503, headers={"Retry-After": "0"}, json={"detail": "the queue is full"})
    client, sent = scripted(busy, busy, httpx.Response(200, json={"models": []}))
    assert client.models().models == []
    assert len(sent) == 3
    client, sent = scripted(busy, busy, busy)
    with pytest.raises(ApiError) as raised:
        client.models()
    assert raised.value.status_code == 503 and raised.value.detail == "the queue is full" and len(sent) == 3


def test_refusals_raise_with_the_services_detail_and_are_not_retried() -> None:
    client, sent = scripted(httpx.Response(422, json={"detail": "query parameter 'conf': too large"}))
    with pytest.raises(ApiError, match="conf") as raised:
        client.detect(b"png", conf=2.0)
    assert raised.value.status_code == 422 and len(sent) == 1
    assert sent[0].url.params["conf"] == "2.0"


def test_the_key_goes_as_a_bearer_token() -> None:
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200, json={"models": []}))
    Client("http://service", api_key="k1", transport=transport).models()
    assert sent[0].headers["authorization"] == "Bearer k1"


def test_images_from_paths_bytes_pairs_and_arrays(tmp_path: Path) -> None:
    path = tmp_path / "frame.png"
    path.write_bytes(png_bytes())
    assert image_part(path, 0)[1][0] == "frame.png"
    assert image_part(b"data", 3)[1][:2] == ("image-3", b"data")
    assert image_part(("a.tif", b"data"), 0)[1][:2] == ("a.tif", b"data")
    deep = np.full((20, 30), 40000, dtype=np.uint16)
    name, data, kind = image_part(deep, 1)[1]
    decoded = Image.open(io.BytesIO(data))
    assert (name, kind, decoded.size) == ("image-1.png", "image/png", (30, 20)) and decoded.mode.startswith("I")
    with pytest.raises(TypeError):
        image_part(3.5, 0)


def test_server_sent_events_are_parsed_into_typed_events() -> None:
    lines = [
        "retry: 2000",
        "",
        ": keep-alive",
        "id: 1-0",
        "event: frame",
        'data: {"frame_index": 4, "time_s": 0.4, "captured_at": 1.5,',
        'data:  "detections": []}',
        "",
        "id: 2-0",
        "event: status",
        'data: {"status": "stopped"}',
        "",
        "event: unknown",
        'data: {"x": 1}',
        "",
    ]
    events = list(parse_events(lines))
    assert [event.type for event in events] == ["frame", "status", "unknown"]
    assert isinstance(events[0].data, FrameEvent) and events[0].data.frame_index == 4 and events[0].id == "1-0"
    assert isinstance(events[1].data, StatusEvent) and events[1].data.status.value == "stopped"
    assert events[2].data == {"x": 1}
    assert EventParser().feed("") is None


# --------------------------------------------------------------------------------- against a service


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("client")
    env = {
        "MASENET_STORAGE": str(folder / "storage"),
        "MASENET_STREAM_ALLOW": "127.0.0.1",
        "MASENET_VIDEO_CHUNK_FRAMES": "16",
        "MASENET_IMGSZ": None,  # the model's pixel scale: the shipped weights find the scene's targets
    }
    connection = redis.Redis.from_url(REDIS_URL)
    try:
        with served(default_weights_path(), folder, connection, **env) as stack:
            yield stack.api.url
    finally:
        connection.flushdb()
        connection.close()


@pytest.fixture
def client(service: str) -> Iterator[Client]:
    with Client(service, timeout=60.0) as made:
        yield made


def test_detect_takes_paths_bytes_and_arrays(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "one.png"
    path.write_bytes(png_bytes(96, 64))
    scene = CameraScene()
    answer = client.detect([path, png_bytes(64, 48, bits=16), scene.frame(0)], conf=0.5, preview=True)
    assert [result.filename for result in answer.results] == ["one.png", "image-1", "image-2.png"]
    assert [(result.width, result.height) for result in answer.results] == [(96, 64), (64, 48), (320, 256)]
    centres = sorted(((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2) for d in answer.results[2].detections)
    assert len(centres) == 2 and all(
        min(abs(x - cx) + abs(y - cy) for cx, cy in scene.centres(0)) < 4 for x, y in centres
    ), "the shipped model finds the two targets"
    assert all(result.preview for result in answer.results) and answer.model.name == "masenet-n"
    status = client.status()
    assert [worker.status.value for worker in status.workers] == ["ready"] and status.queues.images == 0
    overlay = client.detect(scene.frame(1), gradcam=True).results[0].gradcam
    assert Image.open(io.BytesIO(base64.b64decode(overlay))).size == (320, 256)
    with pytest.raises(ApiError) as raised:
        client.detect(path, conf=2.0)
    assert raised.value.status_code == 422 and "conf" in raised.value.detail


def test_a_video_job_from_upload_to_annotated_mp4(client: Client, tmp_path: Path) -> None:
    video = write_test_video(tmp_path / "clip.mp4", frames=48)
    accepted = client.submit_video(video, annotate=True, frame_stride=2)
    seen: list[tuple[str, int]] = []
    state = client.wait(accepted.job_id, progress=lambda s: seen.append((s.status.value, s.progress.frames_done)))
    assert state.status == VideoStatus.FINISHED and seen[-1] == ("finished", 24)
    done = [frames for _, frames in seen]
    assert done == sorted(done)
    result = client.result(accepted.job_id)
    assert [frame.index for frame in result.frames] == list(range(0, 48, 2))
    mp4 = client.annotated_video(accepted.job_id, tmp_path / "out.mp4")
    assert mp4.stat().st_size > 1000
    other = client.submit_video(video)
    assert client.cancel(other.job_id).status == VideoStatus.CANCELED
    with pytest.raises(JobFailed):
        client.wait(other.job_id)
    with pytest.raises(ApiError) as raised:
        client.result("0" * 32)
    assert raised.value.status_code == 404


def test_a_stream_from_start_to_stop(client: Client) -> None:
    with MjpegCamera(CameraScene(), fps=10) as camera:
        accepted = client.start_stream(camera.url, fps=5, conf=0.5)
        frames = []
        for event in client.events(accepted.stream_id):
            if isinstance(event.data, FrameEvent):
                frames.append(event.data)
            if len(frames) == 5:
                break
        assert [frame.frame_index for frame in frames] == sorted(frame.frame_index for frame in frames)
        deadline = time.monotonic() + 5.0  # the worker reports its counters every half second
        while client.stream(accepted.stream_id).frames_processed < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.stream(accepted.stream_id).frames_processed >= 5
        assert accepted.stream_id in [stream.stream_id for stream in client.streams()]
        assert client.snapshot(accepted.stream_id)[:2] == b"\xff\xd8"
        assert client.stop_stream(accepted.stream_id).status.value == "stopped"
        started = time.monotonic()
        tail = list(client.events(accepted.stream_id))  # ends: the stream has ended
        assert time.monotonic() - started < 10 and all(event.type != "frame" for event in tail)


def test_the_async_client_detects_and_follows_a_stream(service: str) -> None:
    async def run(camera_url: str) -> tuple[int, list[int], str]:
        async with AsyncClient(service) as client:
            answer = await client.detect(CameraScene().frame(2), conf=0.5)
            accepted = await client.start_stream(camera_url, fps=5, conf=0.5)
            frames: list[int] = []
            async for event in client.events(accepted.stream_id):
                if isinstance(event.data, FrameEvent):
                    frames.append(event.data.frame_index)
                if len(frames) == 3:
                    break
            stopped = await client.stop_stream(accepted.stream_id)
            return len(answer.results[0].detections), frames, stopped.status.value

    with MjpegCamera(CameraScene(), fps=10) as camera:
        found, frames, status = asyncio.run(run(camera.url))
    assert found == 2 and len(frames) == 3 and frames == sorted(frames) and status == "stopped"


def test_the_commands_print_detections_and_job_results(service: str, tmp_path: Path) -> None:
    frames = []
    for index in range(3):
        frames.append(tmp_path / f"f{index}.png")
        Image.fromarray(CameraScene().frame(index)).save(frames[-1])
    env = child_env({"MASENET_URL": service})
    done = subprocess.run(
        [*masenet_command("detect"), *map(str, frames), "--conf", "0.5", "--batch", "2", "--gradcam", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["path"] for line in lines] == list(map(str, frames))
    assert all(len(line["detections"]) == 2 for line in lines)
    assert (tmp_path / "f0.gradcam.png").is_file()
    video = write_test_video(tmp_path / "clip.mp4", frames=32)
    out = tmp_path / "result.json"
    done = subprocess.run(
        [*masenet_command("submit"), str(video), "--wait", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["status"] == "finished" and summary["frames"] == 32
    assert len(json.loads(out.read_text())["frames"]) == 32
    refused = subprocess.run(
        [*masenet_command("detect"), str(frames[0]), "--conf", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1 and "conf" in refused.stderr and "Traceback" not in refused.stderr
