"""decode_image on complete and truncated files: a frame with missing pixel data is a named error, never a
partly zero-filled array. PNGs are also written by hand here (interlaced, 1 and 16 bit), so the row count
check is tested on layouts Pillow cannot write.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from model.imaging import (
    PNG_ADAM7_PASSES,
    PNG_SIGNATURE,
    ImageDecodeError,
    decode_image,
    inflated_size,
    png_scanline_bytes,
)
from tests.reliability.media import png_parts


def chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def scanlines(pixels: np.ndarray, bit_depth: int, interlaced: bool) -> bytes:
    """Filtered rows (filter type 0) of a grey (H, W) or RGB (H, W, 3) frame, per Adam7 pass when interlaced."""
    rows = bytearray()
    for first_column, first_row, column_step, row_step in PNG_ADAM7_PASSES if interlaced else ((0, 0, 1, 1),):
        sub_image = pixels[first_row::row_step, first_column::column_step]
        if sub_image.shape[0] == 0 or sub_image.shape[1] == 0:
            continue  # an empty pass has no rows at all
        for row in sub_image:
            if bit_depth == 1:
                rows += b"\x00" + np.packbits(row.astype(bool)).tobytes()
            elif bit_depth == 16:
                rows += b"\x00" + row.astype(">u2").tobytes()
            else:
                rows += b"\x00" + row.astype(np.uint8).tobytes()
    return bytes(rows)


def png_file(width: int, height: int, bit_depth: int, colour_type: int, interlaced: bool, rows: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, int(interlaced))
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def pillow_png(width: int = 96, height: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(height, width), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


LAYOUTS = [
    pytest.param(1, 0, id="grey-1bit"),
    pytest.param(8, 0, id="grey-8bit"),
    pytest.param(16, 0, id="grey-16bit"),
    pytest.param(8, 2, id="rgb-8bit"),
]
SIZES = [(1, 1), (3, 5), (9, 9), (33, 17), (1, 40), (40, 1)]


@pytest.mark.parametrize("interlaced", [False, True], ids=["plain", "adam7"])
@pytest.mark.parametrize(("bit_depth", "colour_type"), LAYOUTS)
def test_complete_png_decodes_to_its_pixels(bit_depth: int, colour_type: int, interlaced: bool) -> None:
    rng = np.random.default_rng(bit_depth + colour_type)
    for width, height in SIZES:
        shape = (height, width, 3) if colour_type == 2 else (height, width)
        peak = 2 if bit_depth == 1 else 2**bit_depth
        pixels = rng.integers(0, peak, size=shape, dtype=np.uint16 if bit_depth == 16 else np.uint8)
        rows = scanlines(pixels, bit_depth, interlaced)
        assert len(rows) == png_scanline_bytes(width, height, bit_depth, colour_type, interlaced)
        frame = decode_image(png_file(width, height, bit_depth, colour_type, interlaced, rows))
        expected = np.repeat((pixels * 255)[:, :, None], 3, axis=2) if bit_depth == 1 else pixels
        np.testing.assert_array_equal(frame, expected)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"])
def test_pillow_written_pngs_pass_the_row_check(mode: str) -> None:
    for width, height in SIZES:
        image = Image.new("RGB", (width, height), (200, 100, 50)).convert(mode if mode != "I;16" else "L")
        if mode == "I;16":
            image = Image.fromarray(np.full((height, width), 40000, dtype=np.uint16))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        assert decode_image(buffer.getvalue()).shape[:2] == (height, width)


@pytest.mark.parametrize("interlaced", [False, True], ids=["plain", "adam7"])
def test_png_whose_pixel_data_ends_before_the_last_row_is_a_named_error(interlaced: bool) -> None:
    # The zlib stream is complete but lacks 32 rows of 1 + 96 bytes: the last half of the frame, or Adam7's last
    # pass (every odd row). Pillow alone decodes it without an error and leaves those rows zero.
    pixels = np.random.default_rng(1).integers(0, 256, size=(64, 96), dtype=np.uint8)
    rows = scanlines(pixels, 8, interlaced)
    short = png_file(96, 64, 8, 0, interlaced, rows[: len(rows) - 32 * 97])
    with pytest.raises(ImageDecodeError, match="truncated.*rows are missing"):
        decode_image(short)


def test_png_cut_in_the_middle_of_its_idat_data_is_a_named_error() -> None:
    header, idat = png_parts(pillow_png())
    for fraction in (0.1, 0.5, 0.99):
        cut = PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", idat[: int(len(idat) * fraction)])
        with pytest.raises(ImageDecodeError, match="truncated"):
            decode_image(cut + chunk(b"IEND", b""))


def test_png_without_pixel_data_is_a_named_error() -> None:
    header, _ = png_parts(pillow_png())
    with pytest.raises(ImageDecodeError):
        decode_image(PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IEND", b""))


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "BMP", "TIFF"])
def test_file_cut_short_is_a_named_error_even_with_load_truncated_images_set(
    image_format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # set by some other library in the process
    rng = np.random.default_rng(2)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)).save(buffer, format=image_format)
    data = buffer.getvalue()
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_row_check_inflates_a_bomb_only_as_far_as_the_header_needs() -> None:
    bomb = zlib.compress(bytes(64 * 1024 * 1024), 9)  # 64 MiB of zeros in about 64 KiB
    assert inflated_size([bomb[: len(bomb) // 2], bomb[len(bomb) // 2 :]], 1000) == 1000
    assert inflated_size([zlib.compress(bytes(10))], 1000) == 10
