"""Streaming multipart parsing under a byte cap, and the header check of images (no Redis)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import numpy as np
import pytest
from PIL import Image

from service.errors import InvalidMedia, InvalidParameters, PixelLimitExceeded, UnsupportedMedia, UploadTooLarge
from service.uploads import (
    MultipartReader,
    check_declared_length,
    inspect_image,
    multipart_boundary,
    select_images,
)
from tests.service.helpers import png_bytes

BOUNDARY = b"testboundary"


def multipart(*parts: tuple[str, str, bytes]) -> bytes:
    body = b""
    for name, filename, data in parts:
        body += b"--" + BOUNDARY + b"\r\n"
        body += f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode()
        body += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    return body + b"--" + BOUNDARY + b"--\r\n"


def image_bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_parts_come_back_in_order() -> None:
    body = multipart(("image", "a.png", b"first"), ("image", "b.png", b"second\r\nline"))
    reader = MultipartReader(BOUNDARY, max_bytes=10_000, max_parts=8)
    for start in range(0, len(body), 7):  # arbitrary chunking
        reader.feed(body[start : start + 7])
    parsed = reader.finish()
    assert [(f.field_name, f.filename, f.data) for f in parsed.files] == [
        ("image", "a.png", b"first"),
        ("image", "b.png", b"second\r\nline"),
    ]
    assert parsed.body_bytes == len(body)


def test_cap_is_enforced_while_streaming() -> None:
    chunk = b"x" * 1000
    consumed = []

    async def stream() -> AsyncIterator[bytes]:
        yield b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\n'
        for index in range(100):
            consumed.append(index)
            yield chunk

    reader = MultipartReader(BOUNDARY, max_bytes=5_000, max_parts=8)
    with pytest.raises(UploadTooLarge, match="MASENET_MAX_UPLOAD_BYTES"):
        asyncio.run(reader.read(stream()))
    assert len(consumed) <= 6  # stopped right after crossing 5 kB, not after 100 kB


def test_declared_length_above_the_cap_is_refused_before_reading() -> None:
    with pytest.raises(UploadTooLarge):
        check_declared_length("1000001", 1_000_000)
    check_declared_length("1000000", 1_000_000)
    check_declared_length(None, 10)
    with pytest.raises(InvalidParameters):
        check_declared_length("many", 10)


def test_too_many_parts() -> None:
    body = multipart(*[("image", f"{index}.png", b"x") for index in range(3)])
    reader = MultipartReader(BOUNDARY, max_bytes=10_000, max_parts=2)
    with pytest.raises(UploadTooLarge, match="MASENET_MAX_IMAGES_PER_REQUEST"):
        reader.feed(body)


def test_content_type_and_field_names() -> None:
    assert multipart_boundary('multipart/form-data; boundary="abc"') == b"abc"
    with pytest.raises(UnsupportedMedia):
        multipart_boundary("application/json")
    with pytest.raises(UnsupportedMedia):
        multipart_boundary(None)
    reader = MultipartReader(BOUNDARY, max_bytes=10_000, max_parts=4)
    reader.feed(multipart(("file", "a.png", b"x")))
    with pytest.raises(InvalidParameters, match="'file'"):
        select_images(reader.finish().files)
    with pytest.raises(InvalidParameters, match="no image"):
        select_images([])


def test_truncated_body_is_refused() -> None:
    body = multipart(("image", "a.png", b"data"))
    reader = MultipartReader(BOUNDARY, max_bytes=10_000, max_parts=4)
    reader.feed(body[: len(body) // 2])
    with pytest.raises(InvalidParameters, match="cut off"):
        reader.finish()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP"])
def test_accepted_formats(fmt: str) -> None:
    data = image_bytes(Image.new("L", (40, 30)), fmt)
    header = inspect_image(data, "frame", max_pixels=10_000)
    assert (header.format, header.width, header.height) == (fmt, 40, 30)


def test_sixteen_bit_png_is_accepted() -> None:
    header = inspect_image(png_bytes(48, 32, bits=16), "deep.png", max_pixels=10_000)
    assert (header.width, header.height) == (48, 32)


def test_refusals() -> None:
    with pytest.raises(InvalidMedia, match="empty"):
        inspect_image(b"", "empty.png", max_pixels=100)
    with pytest.raises(UnsupportedMedia, match="PNG, JPEG, TIFF or BMP"):
        inspect_image(b"plain text, not an image", "notes.txt", max_pixels=100)
    with pytest.raises(UnsupportedMedia, match="GIF"):
        inspect_image(image_bytes(Image.new("L", (8, 8)), "GIF"), "anim.gif", max_pixels=100)
    with pytest.raises(PixelLimitExceeded, match="MASENET_MAX_PIXELS"):
        inspect_image(image_bytes(Image.new("L", (200, 100)), "PNG"), "big.png", max_pixels=19_999)
    pages = [Image.fromarray(np.full((16, 16), value, np.uint8)) for value in (10, 200)]
    with pytest.raises(InvalidMedia, match="2 frames"):
        inspect_image(image_bytes(pages[0], "TIFF", save_all=True, append_images=pages[1:]), "stack.tif", 10_000)
