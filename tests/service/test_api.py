"""The HTTP API against the real Redis and one real `masenet worker` process (tiny random-init model).

Covers the success path (one and several images, 16-bit input, Grad-CAM), every client error code, the
worker-side media failure (422 naming the job), queue-full 503, auth, /models, /readyz, the metrics of both
processes and batch formation across concurrent requests.
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from jobs.settings import Settings
from service.app import create_app
from tests.service.helpers import WorkerProcess, decode_png, make_settings, metric_value, new_prefix, png_bytes
from tools.launch import free_port

pytestmark = pytest.mark.slow

PREFIX = new_prefix()


@pytest.fixture(scope="module")
def settings() -> Settings:
    return make_settings(PREFIX)


@pytest.fixture(scope="module")
def worker(
    redis_client: redis.Redis, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    process = WorkerProcess(PREFIX, tiny_checkpoint, tmp_path_factory.mktemp("logs") / "worker.log").start()
    try:
        process.wait_for(redis_client, "ready")
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(settings: Settings, worker: WorkerProcess) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def image_part(data: bytes, name: str = "frame.png") -> tuple[str, tuple[str, bytes, str]]:
    return ("image", (name, data, "image/png"))


def test_one_image(client: TestClient) -> None:
    response = client.post("/detect", files=[image_part(png_bytes(96, 64), "one.png")], params={"conf": 0.0001})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"model", "results", "timing"}
    assert body["model"]["name"] == "masenet-n"
    assert body["model"]["class_names"] == ["target"]
    assert len(body["model"]["weights_sha256"]) == 64
    assert set(body["timing"]) == {"queue_ms", "inference_ms", "total_ms"}
    assert body["timing"]["total_ms"] >= body["timing"]["inference_ms"] > 0
    (result,) = body["results"]
    assert set(result) == {"filename", "width", "height", "detections", "gradcam", "preview"}
    assert (result["filename"], result["width"], result["height"], result["gradcam"]) == ("one.png", 96, 64, None)
    assert result["detections"], "conf near 0 keeps boxes even for a random model"
    detection = result["detections"][0]
    assert set(detection) == {"box", "score", "class_id", "class_name"}
    assert len(detection["box"]) == 4 and detection["class_name"] == "target"
    x1, y1, x2, y2 = detection["box"]
    assert 0 <= x1 <= x2 <= 96 and 0 <= y1 <= y2 <= 64


def test_pixel_scale_and_tta_per_request(client: TestClient) -> None:
    frame = [image_part(png_bytes(96, 64))]
    for params in ({"tta": "off"}, {"tta": "flips"}, {"pixel_scale": 0.5}, {"pixel_scale": 2.0, "tta": "mirror"}):
        response = client.post("/detect", files=frame, params={"conf": 0.0001, **params})
        assert response.status_code == 200, (params, response.text)
        (result,) = response.json()["results"]
        assert result["detections"] and all(
            0 <= d["box"][2] <= 96 and 0 <= d["box"][3] <= 64 for d in result["detections"]
        )
    both = client.post("/detect", files=frame, params={"imgsz": 64, "pixel_scale": 1.0})
    assert both.status_code == 422 and "not both" in both.json()["detail"]
    unknown = client.post("/detect", files=frame, params={"tta": "spin"})
    assert unknown.status_code == 422


def test_input_budget_is_413_before_queueing(settings: Settings, worker: WorkerProcess) -> None:
    # The worker serves at a fixed imgsz of 64: a 96x64 frame fills a 64x64 input, 4,096 pixels a view.
    with TestClient(create_app(settings.model_copy(update={"max_input_pixels": 2 * 64 * 64}))) as small:
        frame = [image_part(png_bytes(96, 64), "wide.png")]
        assert small.post("/detect", files=frame, params={"tta": "mirror"}).status_code == 200
        for params in ({"tta": "flips"}, {"pixel_scale": 4.0, "tta": "off"}):
            response = small.post("/detect", files=frame, params=params)
            assert response.status_code == 413, (params, response.text)
            detail = response.json()["detail"]
            assert "'wide.png' (96x64)" in detail and "MASENET_MAX_INPUT_PIXELS" in detail and "tta=off" in detail


def test_several_images_keep_request_order(client: TestClient) -> None:
    sizes = [(96, 64), (64, 64), (80, 48), (40, 72)]
    files = [
        image_part(png_bytes(width, height, seed=index), f"img{index}.png")
        for index, (width, height) in enumerate(sizes)
    ]
    response = client.post("/detect", files=files, params={"max_det": 5})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [result["filename"] for result in results] == [f"img{index}.png" for index in range(len(sizes))]
    assert [(result["width"], result["height"]) for result in results] == sizes
    assert all(len(result["detections"]) <= 5 for result in results)


def test_sixteen_bit_and_rgb_frames(client: TestClient) -> None:
    files = [image_part(png_bytes(64, 48, bits=16), "deep.png"), image_part(png_bytes(64, 48, channels=3), "rgb.png")]
    response = client.post("/detect", files=files)
    assert response.status_code == 200, response.text
    assert [(r["width"], r["height"]) for r in response.json()["results"]] == [(64, 48), (64, 48)]


def test_gradcam_returns_a_png_of_the_input_size(client: TestClient) -> None:
    files = [image_part(png_bytes(90, 50), "a.png"), image_part(png_bytes(64, 64, seed=3), "b.png")]
    response = client.post("/detect", files=files, params={"gradcam": "true", "imgsz": 96})
    assert response.status_code == 200, response.text
    for result in response.json()["results"]:
        overlay = decode_png(base64.b64decode(result["gradcam"]))
        assert overlay.format == "PNG"
        assert overlay.size == (result["width"], result["height"])
        assert overlay.mode == "RGB"


def test_preview_shows_a_sixteen_bit_frame_as_the_model_saw_it(client: TestClient) -> None:
    response = client.post("/detect", files=[image_part(png_bytes(90, 50, bits=16), "deep.png")])
    assert response.json()["results"][0]["preview"] is None  # only when asked
    response = client.post("/detect", files=[image_part(png_bytes(90, 50, bits=16), "deep.png")], params={"preview": 1})
    assert response.status_code == 200, response.text
    preview = Image.open(io.BytesIO(base64.b64decode(response.json()["results"][0]["preview"])))
    assert preview.format == "JPEG" and preview.size == (90, 50) and preview.mode == "RGB"
    assert max(preview.convert("L").getextrema()) > 200  # tone-mapped to 8 bits: the specks are bright


def test_corrupt_image_found_by_the_worker_is_422_naming_the_job(client: TestClient) -> None:
    truncated = png_bytes(96, 64)[:150]  # the header parses, the pixel data is cut off
    response = client.post("/detect", files=[image_part(png_bytes(), "good.png"), image_part(truncated, "cut.png")])
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "'cut.png'" in detail and "job " in detail and "truncated" in detail


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"conf": 1.5}, "'conf'"),
        ({"iou": -0.1}, "'iou'"),
        ({"max_det": 0}, "'max_det'"),
        ({"max_det": 1001}, "'max_det'"),
        ({"imgsz": 100}, "multiple of 32"),
        ({"imgsz": 4096}, "'imgsz'"),
        ({"gradcam": "maybe"}, "'gradcam'"),
    ],
)
def test_out_of_range_parameters_are_422(client: TestClient, params: dict, fragment: str) -> None:
    response = client.post("/detect", files=[image_part(png_bytes())], params=params)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, str) and fragment in detail


@pytest.mark.parametrize(
    ("files", "status", "fragment"),
    [
        ([("image", ("notes.txt", b"not an image at all", "text/plain"))], 415, "PNG, JPEG, TIFF or BMP"),
        ([("image", ("empty.png", b"", "image/png"))], 422, "empty"),
        ([("frame", ("a.png", png_bytes(), "image/png"))], 422, "'frame'"),
    ],
)
def test_media_errors(client: TestClient, files: list, status: int, fragment: str) -> None:
    response = client.post("/detect", files=files)
    assert response.status_code == status
    assert fragment in response.json()["detail"]


def test_multi_frame_image_is_422(client: TestClient) -> None:
    pages = [Image.new("L", (16, 16), value) for value in (10, 200)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    response = client.post("/detect", files=[("image", ("stack.tif", buffer.getvalue(), "image/tiff"))])
    assert response.status_code == 422
    assert "frames" in response.json()["detail"]


def test_not_multipart_is_415(client: TestClient) -> None:
    response = client.post("/detect", content=b"{}", headers={"content-type": "application/json"})
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["detail"]


def test_pixel_cap_is_413(settings: Settings, worker: WorkerProcess) -> None:
    with TestClient(create_app(settings.model_copy(update={"max_pixels": 5000}))) as small:
        response = small.post("/detect", files=[image_part(png_bytes(100, 60))])
    assert response.status_code == 413
    assert "MASENET_MAX_PIXELS" in response.json()["detail"]


def test_upload_cap_is_413_while_streaming(settings: Settings, worker: WorkerProcess) -> None:
    """A real server answers 413 after ~60 kB of a chunked body whose end never comes: it does not buffer it all."""
    import uvicorn

    app = create_app(settings.model_copy(update={"max_upload_bytes": 50_000}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", server.config.port), timeout=30) as connection:
            connection.sendall(
                b"POST /detect HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
            )
            part = b'--b\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
            for piece in [part] + [b"\0" * 10_000] * 6:  # 60 kB of a body that is never finished
                connection.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            answer = connection.recv(65536)
        with TestClient(app) as test_client:
            declared = test_client.post("/detect", files=[image_part(b"\0" * 60_000)])
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"MASENET_MAX_UPLOAD_BYTES" in answer
    assert declared.status_code == 413  # a declared Content-Length above the cap is refused before reading


def test_too_many_images_is_413(settings: Settings, worker: WorkerProcess) -> None:
    with TestClient(create_app(settings.model_copy(update={"max_images_per_request": 2}))) as small:
        response = small.post("/detect", files=[image_part(png_bytes())] * 3)
    assert response.status_code == 413
    assert "MASENET_MAX_IMAGES_PER_REQUEST" in response.json()["detail"]


def test_queue_full_is_503_with_retry_after(settings: Settings, worker: WorkerProcess) -> None:
    with TestClient(create_app(settings.model_copy(update={"max_queue": 1}))) as small:
        response = small.post("/detect", files=[image_part(png_bytes())] * 2)
        metrics = small.get("/metrics").text
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert "MASENET_MAX_QUEUE" in response.json()["detail"]
    assert metric_value(metrics, 'masenet_rejected_requests_total{reason="queue_full"}') == 1.0


def test_bearer_key_when_api_keys_are_set(settings: Settings, worker: WorkerProcess) -> None:
    with TestClient(create_app(settings.model_copy(update={"api_keys": ("k1", "k2")}))) as guarded:
        missing = guarded.post("/detect", files=[image_part(png_bytes())])
        wrong = guarded.post("/detect", files=[image_part(png_bytes())], headers={"Authorization": "Bearer nope"})
        models = guarded.get("/models")
        good = guarded.post("/detect", files=[image_part(png_bytes())], headers={"Authorization": "Bearer k2"})
        open_paths = [guarded.get(path).status_code for path in ("/healthz", "/readyz", "/metrics", "/docs")]
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401 and "not valid" in wrong.json()["detail"]
    assert models.status_code == 401
    assert good.status_code == 200, good.text
    assert open_paths == [200, 200, 200, 200]


def test_models_and_readiness(client: TestClient, worker: WorkerProcess) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "workers": [worker.name]}
    assert client.get("/healthz").json() == {"status": "ok"}
    (model,) = client.get("/models").json()["models"]
    assert model["name"] == "masenet-n" and model["scale"] == "n"
    assert model["class_names"] == ["target"] and model["imgsz"] == 64 and model["device"] == "cpu"
    assert model["pixel_scale"] is None  # MASENET_IMGSZ fixes the size
    assert model["workers"] == [worker.name] and len(model["weights_sha256"]) == 64
    schema = client.get("/openapi.json").json()
    assert "DetectResponse" in schema["components"]["schemas"]
    assert "multipart/form-data" in schema["paths"]["/detect"]["post"]["requestBody"]["content"]


def test_concurrent_requests_form_batches(client: TestClient, worker: WorkerProcess, redis_client: redis.Redis) -> None:
    metrics_url = worker.metrics_url(redis_client)
    before = httpx.get(metrics_url).text
    statuses: list[int] = []

    def send(seed: int) -> None:
        statuses.append(client.post("/detect", files=[image_part(png_bytes(64, 48, seed=seed))]).status_code)

    threads = [threading.Thread(target=send, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = httpx.get(metrics_url).text
    assert statuses == [200] * 8
    count = metric_value(after, "masenet_batch_size_count") - metric_value(before, "masenet_batch_size_count")
    images = metric_value(after, "masenet_batch_size_sum") - metric_value(before, "masenet_batch_size_sum")
    assert images == 8
    assert count < 8, "8 concurrent single-image requests ran as 8 forward passes: no batching happened"


def test_metrics_of_both_processes(client: TestClient, worker: WorkerProcess, redis_client: redis.Redis) -> None:
    api = client.get("/metrics")
    assert api.status_code == 200
    text = api.text
    assert metric_value(text, 'masenet_queue_depth{queue="images"}') == 0.0
    assert metric_value(text, 'masenet_queue_depth{queue="video"}') == 0.0
    assert metric_value(text, 'masenet_http_requests_total{method="POST",route="/detect",status="200"}') >= 1
    assert metric_value(text, 'masenet_rejected_requests_total{reason="params"}') >= 1
    assert metric_value(text, 'masenet_rejected_requests_total{reason="media"}') >= 1
    assert metric_value(text, 'masenet_upload_bytes_total{route="/detect"}') > 0
    assert "masenet_http_request_duration_seconds_bucket" in text
    assert "masenet_http_requests_in_flight" in text
    assert 'masenet_video_jobs_total{status="accepted"}' in text
    worker_text = httpx.get(worker.metrics_url(redis_client)).text
    assert metric_value(worker_text, "masenet_worker_up") == 1.0
    assert metric_value(worker_text, "masenet_images_processed_total") >= 1
    assert metric_value(worker_text, 'masenet_job_failures_total{reason="media"}') >= 1
    assert metric_value(worker_text, "masenet_model_load_seconds") > 0
    assert 'masenet_model_info{device="cpu",name="masenet-n",scale="n"' in worker_text
    for stage in ("decode", "preprocess", "inference", "postprocess", "gradcam"):
        assert metric_value(worker_text, f'masenet_stage_duration_seconds_count{{stage="{stage}"}}') >= 1
    assert metric_value(worker_text, 'masenet_queue_wait_seconds_count{queue="images"}') >= 1


def test_jobs_are_recorded_through_rq(client: TestClient, redis_client: redis.Redis) -> None:
    from rq.job import Job
    from rq.queue import Queue
    from rq.serializers import JSONSerializer

    queue = Queue(f"{PREFIX}:images", connection=redis_client, serializer=JSONSerializer)
    finished = queue.finished_job_registry.get_job_ids()
    failed = queue.failed_job_registry.get_job_ids()
    assert finished and failed  # the corrupt image's job is in the failed registry
    assert queue.started_job_registry.get_job_ids() == []
    job = Job.fetch(finished[0], connection=redis_client, serializer=JSONSerializer)
    assert job.get_status() == "finished"
    assert set(job.return_value()) >= {"filename", "width", "height", "detections"}
    failed_job = Job.fetch(failed[0], connection=redis_client, serializer=JSONSerializer)
    assert failed_job.get_status() == "failed"
    assert failed_job.latest_result().exc_string.startswith("media:")
    assert redis_client.keys(f"{PREFIX}:data:*") == []  # image bytes are deleted once answered


def test_allow_names_every_method_served_at_a_path(client: TestClient) -> None:
    job_path = f"/jobs/{uuid.uuid4().hex}"
    options = client.options(job_path)
    assert options.status_code == 204 and options.headers["Allow"] == "DELETE, GET, OPTIONS"
    wrong = client.put(job_path)
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "DELETE, GET, OPTIONS"
    assert "use DELETE, GET, OPTIONS" in wrong.json()["detail"]
    assert client.get("/detect").headers["Allow"] == "OPTIONS, POST"
