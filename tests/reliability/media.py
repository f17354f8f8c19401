"""Hostile and unusual image files, generated in memory (no binary files in the repository)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def noise_frame(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """A grey 8-bit frame of random noise."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(height, width), dtype=np.uint8))


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def declared_size_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height grey pixels: a decompression bomb's calling card."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress((b"\x00" * (1 + min(width, 4096))) * 4)
    return PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def png_parts(data: bytes) -> tuple[bytes, bytes]:
    """(IHDR payload, concatenated IDAT payloads) of a PNG."""
    position, header, idat = len(PNG_SIGNATURE), b"", b""
    while position + 8 <= len(data):
        length, tag = struct.unpack(">I4s", data[position : position + 8])
        payload = data[position + 8 : position + 8 + length]
        header = payload if tag == b"IHDR" else header
        idat += payload if tag == b"IDAT" else b""
        position += 12 + length
    return header, idat


def png_cut_mid_idat(png: bytes) -> bytes:
    """The PNG with its compressed pixel data cut in half, in a well-formed IDAT chunk (valid CRC, then IEND)."""
    header, idat = png_parts(png)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat[: len(idat) // 2])
        + png_chunk(b"IEND", b"")
    )


def png_rows_missing(width: int = 96, height: int = 64) -> bytes:
    """A grey PNG whose zlib stream ends cleanly after the first half of its rows (Pillow zero-fills the rest)."""
    frame = np.asarray(noise_frame(width, height))
    rows = b"".join(b"\x00" + row.tobytes() for row in frame[: height // 2])
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b"")
    )


def float_tiff(width: int = 96, height: int = 64) -> bytes:
    """A 32-bit float TIFF (mode F), values well outside 0..255."""
    rng = np.random.default_rng(1)
    return encode(Image.fromarray((rng.random((height, width)) * 5000.0 - 1000.0).astype(np.float32)), "TIFF")


def animated(image_format: str) -> bytes:
    first, second = noise_frame(seed=1), noise_frame(seed=2)
    if image_format == "GIF":
        first, second = first.convert("P"), second.convert("P")
    return encode(first, image_format, save_all=True, append_images=[second], duration=100, loop=0)


def good_png() -> bytes:
    return encode(noise_frame(), "PNG")


def good_jpeg() -> bytes:
    return encode(noise_frame().convert("RGB"), "JPEG", quality=90)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A complete 8x8 JPEG (about 330 bytes) whose frame header claims width x height."""
    data = bytearray(encode(Image.new("L", (8, 8), 10), "JPEG"))
    start = data.find(b"\xff\xc0")  # baseline start-of-frame: length, precision, then height and width
    data[start + 5 : start + 7] = height.to_bytes(2, "big")
    data[start + 7 : start + 9] = width.to_bytes(2, "big")
    return bytes(data)
