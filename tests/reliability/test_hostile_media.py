"""Hostile media against the real API and a real worker: every file gets an exact, explained answer.

Files that cannot be decoded, or that are too large to decode safely, are refused with a 4xx and a
`detail`; files Pillow decodes into a well-defined still frame (palette, 1-bit, CMYK, float TIFF, a
polyglot whose image part is a complete PNG, extreme aspect ratios, a highly compressible frame under the
pixel cap) are answered 200. After every file the worker process is
still alive and answers a good frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from tests.reliability.media import (
    animated,
    declared_size_png,
    encode,
    float_tiff,
    good_jpeg,
    good_png,
    jpeg_declaring,
    noise_frame,
    png_cut_mid_idat,
    png_rows_missing,
)
from tests.service.helpers import WorkerProcess, make_settings, new_prefix

pytestmark = pytest.mark.slow

MAX_PIXELS = 4_000_000


@dataclass(frozen=True)
class HostileCase:
    name: str
    data: bytes
    status: int
    detail_words: tuple[str, ...] = ()
    content_type: str = "image/png"


def hostile_cases() -> list[HostileCase]:
    png, jpeg = good_png(), good_jpeg()
    return [
        HostileCase("zero-bytes", b"", 422, ("empty",)),
        HostileCase("text", b"this is not an image, just words\n" * 20, 415, ("not a readable image",), "text/plain"),
        HostileCase("truncated-png", png[: len(png) // 2], 422, ("could not be read", "truncated")),
        HostileCase("png-cut-mid-idat", png_cut_mid_idat(png), 422, ("could not be read", "truncated")),
        HostileCase(
            "png-rows-missing", png_rows_missing(), 422, ("could not be read", "truncated", "rows are missing")
        ),
        HostileCase("truncated-jpeg", jpeg[: len(jpeg) // 2], 422, ("could not be read", "truncated"), "image/jpeg"),
        HostileCase("jpeg-cut-at-the-end", jpeg[:-2], 422, ("could not be read", "truncated"), "image/jpeg"),
        HostileCase("jpeg-claims-1500x1500", jpeg_declaring(1500, 1500), 422, ("declares 1500x1500",), "image/jpeg"),
        HostileCase("bomb-above-cap", declared_size_png(4000, 4000), 413, ("MASENET_MAX_PIXELS",)),
        HostileCase("bomb-huge", declared_size_png(60_000, 60_000), 413, ("too large to decode safely",)),
        HostileCase("zeros-below-cap", encode(Image.new("L", (1900, 1900)), "PNG"), 200),
        HostileCase("wide-100000x1", encode(Image.new("L", (100_000, 1), 10), "PNG"), 200),
        HostileCase("tall-1x100000", encode(Image.new("L", (1, 100_000), 10), "PNG"), 200),
        HostileCase("cmyk-jpeg", encode(noise_frame().convert("CMYK"), "JPEG"), 200, content_type="image/jpeg"),
        HostileCase("palette-png", encode(noise_frame().convert("P"), "PNG"), 200),
        HostileCase("one-bit-png", encode(noise_frame().convert("1"), "PNG"), 200),
        HostileCase("float32-tiff", float_tiff(), 200, content_type="image/tiff"),
        HostileCase("animated-gif", animated("GIF"), 415, ("GIF",), "image/gif"),
        HostileCase("animated-png", animated("PNG"), 422, ("2 frames",)),
        HostileCase("png-labelled-zip", png, 200, content_type="application/zip"),
        HostileCase("text-labelled-png", b"<html><body>hello</body></html>", 415, ("not a readable image",)),
        HostileCase("polyglot-png-zip", png + b"PK\x03\x04" + bytes(200) + b"PK\x05\x06" + bytes(18), 200),
        HostileCase("polyglot-png-html", png + b"<html><script>alert(1)</script></html>", 200),
    ]


CASES = hostile_cases()


@pytest.fixture(scope="module")
def served(redis_client: redis.Redis, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    prefix = new_prefix()
    log_path = tmp_path_factory.mktemp("hostile") / "worker.log"
    worker = WorkerProcess(prefix, tiny_checkpoint, log_path, MASENET_MAX_PIXELS=str(MAX_PIXELS))
    worker.start()
    try:
        worker.wait_for(redis_client, "ready")
        settings = make_settings(prefix, timeout_s=120.0, max_pixels=MAX_PIXELS)
        with TestClient(create_app(settings)) as client:
            yield client, worker
    finally:
        worker.stop()


def post_image(client: TestClient, filename: str, data: bytes, content_type: str):
    return client.post("/detect", files=[("image", (filename, data, content_type))])


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_image_gets_an_exact_answer_and_the_worker_survives(served, case: HostileCase) -> None:
    client, worker = served
    response = post_image(client, f"{case.name}.bin", case.data, case.content_type)
    assert response.status_code == case.status, response.text
    body = response.json()
    if case.status == 200:
        (result,) = body["results"]
        assert result["width"] > 0 and result["height"] > 0
    else:
        detail = body["detail"]
        assert isinstance(detail, str) and case.name in detail  # names the offending file
        for word in case.detail_words:
            assert word in detail, detail
    assert worker.process.poll() is None, worker.log_tail()
    good = post_image(client, "good.png", good_png(), "image/png")
    assert good.status_code == 200, good.text
    assert good.json()["results"][0]["width"] == 96


def test_request_that_is_not_multipart_is_415(served) -> None:
    client, _ = served
    response = client.post("/detect", content=good_png(), headers={"content-type": "image/png"})
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["detail"]


def test_one_hostile_image_among_good_ones_fails_the_request_but_not_the_worker(served) -> None:
    client, worker = served
    truncated = good_png()[:300]
    files = [
        ("image", ("a.png", good_png(), "image/png")),
        ("image", ("broken.png", truncated, "image/png")),
        ("image", ("c.png", good_png(), "image/png")),
    ]
    response = client.post("/detect", files=files)
    assert response.status_code == 422
    assert "broken.png" in response.json()["detail"]
    assert worker.process.poll() is None
    again = client.post("/detect", files=[files[0], files[2]])
    assert again.status_code == 200
    assert [result["filename"] for result in again.json()["results"]] == ["a.png", "c.png"]


def test_file_name_in_utf8_is_accepted_and_returned(served) -> None:
    # Browsers and curl send a non-ASCII file name as raw UTF-8 bytes in the part header. Such a name was once
    # refused with 422 ("malformed multipart body: 'latin-1' codec can't encode ...").
    client, _ = served
    name = "кадр 01 ✓.png"
    response = post_image(client, name, good_png(), "image/png")
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["filename"] == name


def test_a_tiny_frame_blown_up_with_gradcam_is_refused_before_it_is_queued(served) -> None:
    """A 70-byte 1x1 PNG at imgsz=2016 with Grad-CAM once took a worker to 23 GB; its cost (2016 x 2016 input
    pixels, Grad-CAM counted 11 times) is now refused by the API, and the worker never sees it."""
    client, worker = served
    dot = encode(Image.new("L", (1, 1), 200), "PNG")
    response = client.post(
        "/detect", params={"imgsz": 2016, "gradcam": "true"}, files=[("image", ("dot.png", dot, "image/png"))]
    )
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert "MASENET_MAX_INPUT_PIXELS" in detail and "Grad-CAM" in detail and "gradcam=false" in detail
    plain = client.post("/detect", params={"imgsz": 2016}, files=[("image", ("dot.png", dot, "image/png"))])
    assert plain.status_code == 200, plain.text  # without Grad-CAM the same frame fits
    assert worker.process.poll() is None
