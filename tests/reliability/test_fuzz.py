"""Property-based fuzzing of the HTTP API from its own OpenAPI schema: no generated request gets a 5xx.

Schemathesis loads the schema from the real app (`create_app`, lifespan started) and generates requests for
every operation in it: valid ones, and ones that break the schema (wrong types, out-of-range numbers,
missing or unexpected parts, other HTTP methods). A real `masenet worker` serves the queues, so a generated
frame that passes the API's header check is decoded and run through the model, and a generated video that
probes as one becomes a real job. With a healthy worker and Redis no request may get a 5xx: 500 is for a
worker failing on a job, 503 for Redis or a full queue, 504 for a missing worker.

The multipart parts are real files, drawn by the media strategies below for the media types the schema's
`encoding` lists: PNG, JPEG, TIFF and BMP frames of random size, mode and depth, and tiny H.264 videos; each
may be cut short, have a byte flipped or carry trailing bytes. The `/jobs/{job_id}` routes get ids from the
schema's strategy and from jobs that exist (finished, annotated, queued), so they answer 200 as well as 404.
A valid `imgsz` above MAX_IMGSZ is lowered to it: the API's answer is the same and the CPU time stays short.

The examples are capped per operation and derandomized (FUZZ_SETTINGS): hypothesis seeds from the test, so
every run sends the same requests until the test or the libraries change, and
`test_the_fuzzing_reached_the_worker_and_real_jobs` checks that the mix still reaches the worker and real jobs.
`test_framing_headers_outside_the_schema_get_no_server_error` covers what the schema does not describe:
raw Content-Length and Content-Type values on the two upload routes.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error

from service.app import create_app
from tests.service.helpers import WorkerProcess, make_settings, new_prefix
from tools.traffic import clip_bytes

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 25  # per operation, for the fuzzing phase; schemathesis adds its boundary and example cases
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
MAX_PIXELS = 1_000_000
MAX_IMGSZ = 128
REQUEST_TIMEOUT_S = 90.0  # above the API's own timeout_s, so a slow answer shows as the API's 504, not a hang
JOB_WAIT_S = 120.0
IMAGE_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/tiff": "TIFF", "image/bmp": "BMP"}
IMAGE_MODES = ("L", "RGB", "I;16", "F", "P", "1", "RGBA", "LA", "CMYK")
# Modes a format cannot store, and the mode the frame is saved in instead.
FALLBACK_MODES = {
    "JPEG": {"I;16": "L", "F": "L", "P": "L", "LA": "L", "1": "L", "RGBA": "RGB"},
    "PNG": {"F": "I;16", "CMYK": "RGB"},
    "BMP": {"I;16": "L", "F": "L", "LA": "L", "RGBA": "RGB", "CMYK": "RGB"},
}
OUTCOMES: Counter[str] = Counter()  # "<METHOD> <path> <status>", filled by the fuzzing test


# ---------------------------------------------------------------------------------------------- media


def mutate(data: bytes, kind: str, fraction: float, value: int) -> bytes:
    """Cut the file anywhere or just before its end, flip one byte, or append bytes; `none` keeps it whole.

    A file cut just before its end keeps its header, so it passes the API's check and fails in the worker.
    """
    if not data or kind == "none":
        return data
    position = min(int(len(data) * fraction), len(data) - 1)
    if kind == "cut":
        return data[:position]
    if kind == "cut-end":
        return data[: max(0, len(data) - 1 - value)]
    if kind == "flip":
        return data[:position] + bytes([data[position] ^ (value or 1)]) + data[position + 1 :]
    return data + bytes([value]) * 64


MUTATIONS = st.tuples(
    st.sampled_from(["none", "cut-end", "flip", "cut", "append", "none"]), st.floats(0, 1), st.integers(0, 255)
)


def image_file(image_format: str, width: int, height: int, mode: str, seed: int) -> bytes:
    """A frame of random pixels in `mode` (or the closest mode the format stores), encoded with Pillow."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    mode = FALLBACK_MODES.get(image_format, {}).get(mode, mode)
    if mode == "I;16":
        image = Image.fromarray(pixels[:, :, 0].astype(np.uint16) * 257)
    elif mode == "F":
        image = Image.fromarray(pixels[:, :, 0].astype(np.float32) * 10.0 - 100.0)
    else:
        image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def images(image_format: str) -> st.SearchStrategy[bytes]:
    files = st.builds(
        image_file,
        st.just(image_format),
        st.integers(1, 160),
        st.integers(1, 120),
        st.sampled_from(IMAGE_MODES),
        st.integers(0, 2**16),
    )
    return st.builds(lambda data, mutation: mutate(data, *mutation), files, MUTATIONS)


def video_file(frames: int, width: int, height: int, seed: int) -> bytes:
    """A short H.264 MP4 of random frames, encoded with PyAV."""
    rng = np.random.default_rng(seed)
    pictures = (rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(frames))
    return clip_bytes(pictures, fps=10, options={"preset": "ultrafast"})


def videos() -> st.SearchStrategy[bytes]:
    sizes = st.sampled_from([(32, 32), (64, 48), (48, 64)])
    files = st.builds(
        lambda count, size, seed: video_file(count, *size, seed), st.integers(1, 6), sizes, st.integers(0, 2**16)
    )
    return st.builds(lambda data, mutation: mutate(data, *mutation), files, MUTATIONS)


for _media_type, _image_format in IMAGE_FORMATS.items():
    schemathesis.openapi.media_type(_media_type, images(_image_format))
schemathesis.openapi.media_type("video/mp4", videos())


# ------------------------------------------------------------------------------------------- fixtures


# The schema is loaded when the module is collected, from an app whose settings are fixed here: schemathesis then
# parametrizes one test per operation. The worker, the storage folder and the real jobs come from `fuzz_target`.
PREFIX = new_prefix()
STORAGE = Path(tempfile.gettempdir()) / PREFIX
APP_SETTINGS = make_settings(
    PREFIX,
    timeout_s=60.0,
    storage=STORAGE,
    max_pixels=MAX_PIXELS,
    max_upload_bytes=4_000_000,
    max_video_bytes=2_000_000,
    max_video_seconds=30.0,
)
JOBS: dict[str, list[str]] = {}  # "read": finished job ids, "delete": queued ones; filled by fuzz_target
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(APP_SETTINGS))


@schema.hook
def before_generate_path_parameters(context: schemathesis.HookContext, strategy: st.SearchStrategy) -> Any:
    """`/jobs/{job_id}` routes get the schema's ids and ids of real jobs (drawn once the fixture made them)."""
    if "{job_id}" not in context.operation.path:
        return strategy
    pool = "delete" if context.operation.method.upper() == "DELETE" else "read"
    real = st.deferred(lambda: st.sampled_from(JOBS[pool]))
    return st.one_of(strategy, real.map(lambda job_id: {"job_id": job_id}))


@pytest.fixture(scope="module")
def fuzz_target(
    redis_client: redis.Redis, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One worker on the app's queues, and real video jobs for the `/jobs/{job_id}` routes."""
    log = tmp_path_factory.mktemp("fuzz") / "worker.log"
    worker = WorkerProcess(
        PREFIX, tiny_checkpoint, log, MASENET_STORAGE=str(STORAGE), MASENET_MAX_PIXELS=str(MAX_PIXELS)
    )
    worker.start()
    try:
        worker.wait_for(redis_client, "ready")
        with TestClient(create_app(APP_SETTINGS)) as client:
            JOBS.update(existing_jobs(client))
        yield worker
    finally:
        worker.stop()
        shutil.rmtree(STORAGE, ignore_errors=True)


def existing_jobs(client: TestClient) -> dict[str, list[str]]:
    """Job ids for the `/jobs/{job_id}` routes: two finished ones to read, two just queued ones to delete."""
    finished = [submit(client, annotate=True), submit(client, annotate=False)]
    for job_id in finished:
        wait_until_final(client, job_id)
    return {"read": finished, "delete": [submit(client, annotate=False), submit(client, annotate=True)]}


def submit(client: TestClient, annotate: bool) -> str:
    # A UTF-8 file name, as browsers send it: such an upload was once refused with 422.
    files = {"video": ("клип.mp4", video_file(4, 64, 48, seed=1), "video/mp4")}
    response = client.post("/jobs", params={"annotate": annotate}, files=files)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def wait_until_final(client: TestClient, job_id: str) -> None:
    deadline = time.monotonic() + JOB_WAIT_S
    while time.monotonic() < deadline:
        state = client.get(f"/jobs/{job_id}").json()
        if state["status"] in ("finished", "failed", "canceled"):
            assert state["status"] == "finished", state
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish within {JOB_WAIT_S} s")


def lower_imgsz(query: Any) -> Any:
    """A valid imgsz above MAX_IMGSZ (int or text) becomes MAX_IMGSZ, of the same type; anything else is kept."""
    value = query.get("imgsz") if isinstance(query, dict) else None
    if not isinstance(value, int | str) or isinstance(value, bool) or not str(value).isascii():
        return query
    try:
        size = int(value)
    except ValueError:
        return query
    if MAX_IMGSZ < size <= 2048 and size % 32 == 0:
        return {**query, "imgsz": type(value)(MAX_IMGSZ)}
    return query


# ---------------------------------------------------------------------------------------------- tests


@schema.parametrize()
@FUZZ_SETTINGS
def test_no_generated_request_gets_a_server_error(case: schemathesis.Case, fuzz_target: WorkerProcess) -> None:
    if case.query:
        case.query = lower_imgsz(case.query)  # here, not in a hook: the coverage phase's cases skip the map hooks
    response = case.call(timeout=REQUEST_TIMEOUT_S)
    OUTCOMES[f"{case.method} {case.path} {response.status_code}"] += 1
    if response.status_code == 422 and b"could not be read" in response.content:
        OUTCOMES[f"{case.method} {case.path} 422 from the worker"] += 1
    case.validate_response(response, checks=[not_a_server_error])
    assert fuzz_target.process.poll() is None, fuzz_target.log_tail()


def test_the_fuzzing_reached_the_worker_and_real_jobs() -> None:
    """The generated files are not all refused at the door: some are served, some fail in the worker."""
    if not OUTCOMES:
        pytest.skip("runs after test_no_generated_request_gets_a_server_error")
    summary = dict(sorted(OUTCOMES.items()))
    for outcome in (
        "POST /detect 200",
        "POST /detect 422 from the worker",
        "POST /jobs 202",
        "GET /jobs/{job_id} 200",
        "GET /jobs/{job_id}/result 200",
        "GET /jobs/{job_id}/video 200",
        "DELETE /jobs/{job_id} 200",
    ):
        assert OUTCOMES[outcome] > 0, f"no {outcome!r} among {summary}"


async def call_raw(app: FastAPI, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    """One request straight through ASGI, so header values an HTTP client would refuse reach the app as sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "server": ("testserver", 80),
        "client": ("testclient", 50000),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    try:
        await app(scope, receive, send)
    except Exception:
        if not statuses:
            raise
    return statuses[0]  # Starlette re-raises an unhandled error after sending its 500, for the server to log


@pytest.fixture(scope="module")
def raw_app() -> FastAPI:
    """An app of its own: these requests run on their own event loops and never get as far as Redis."""
    return create_app(APP_SETTINGS)


LATIN1_TEXT = st.text(st.characters(min_codepoint=1, max_codepoint=255, exclude_characters="\r\n"), max_size=24)


@pytest.mark.parametrize("path", ["/detect", "/jobs"])
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    content_length=st.one_of(LATIN1_TEXT, st.integers(-(10**20), 10**20).map(str), st.just("\u00b2")),
    content_type=st.one_of(
        LATIN1_TEXT, LATIN1_TEXT.map("multipart/form-data; boundary={}".format), st.just("multipart/form-data")
    ),
)
def test_framing_headers_outside_the_schema_get_no_server_error(
    raw_app: FastAPI, path: str, content_length: str, content_type: str
) -> None:
    headers = [(b"content-length", content_length.encode("latin-1")), (b"content-type", content_type.encode("latin-1"))]
    status = asyncio.run(call_raw(raw_app, path, headers, b"--x\r\nnot a multipart body"))
    assert status < 500, (content_length, content_type, status)
