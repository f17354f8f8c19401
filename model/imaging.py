"""Frame decoding and tone mapping without torch.

Infrared cameras deliver 8-bit or 16-bit frames, grayscale or RGB. Everything downstream (the network,
the overlays) works on 8-bit RGB, so 16-bit frames go through an automatic gain control (AGC):

    lo = 0.5th percentile, hi = 99.99th percentile of the frame (robust to dead and hot pixels)
    out = clip((x - lo) / (hi - lo), 0, 1) * 255

A frame whose range is flat (hi <= lo) maps to mid grey rather than dividing by zero. 8-bit frames pass
unchanged. Grayscale frames are replicated to three channels, which is how single-channel infrared enters
a network built for three input channels (and keeps weights trained on RGB usable).

This module is shared by the worker, the data generator and the command line; it imports only numpy
and Pillow, so it is cheap to import anywhere.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageFile

AGC_LOW_PERCENTILE = 0.5
AGC_HIGH_PERCENTILE = 99.99

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_SAMPLES_PER_PIXEL = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples (grey, RGB, palette, grey+A, RGBA)
# Adam7 passes as (first column, first row, column step, row step).
PNG_ADAM7_PASSES = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
INFLATE_STEP_BYTES = 1 << 20  # the IDAT check inflates at most this much at a time


class ImageDecodeError(ValueError):
    """The bytes are not an image this project can read; the message says why."""


def tone_map(frame: np.ndarray) -> np.ndarray:
    """Map a frame of any integer or float depth to uint8 with the documented AGC (uint8 passes through)."""
    if frame.dtype == np.uint8:
        return frame
    values = frame.astype(np.float32)
    lo, hi = np.percentile(values, [AGC_LOW_PERCENTILE, AGC_HIGH_PERCENTILE])
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.full(frame.shape, 128, dtype=np.uint8)
    scaled = (values - lo) * (255.0 / (hi - lo))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def to_rgb8(frame: np.ndarray) -> np.ndarray:
    """Any decoded frame (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), 8 or 16 bit, to contiguous (H, W, 3) uint8."""
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 3 and frame.shape[2] == 4:
        frame = frame[:, :, :3]
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
        raise ImageDecodeError(f"unsupported frame shape {frame.shape}; expected HxW, HxWx1, HxWx3 or HxWx4")
    frame = tone_map(frame)
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    return np.ascontiguousarray(frame)


def pil_to_array(image: Image.Image) -> np.ndarray:
    """Decoded Pillow image to a numpy frame, keeping 16-bit depth (never truncating to 8 bits)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.uint16).copy()
    if mode == "I":
        return np.asarray(image, dtype=np.int32).copy()
    if mode == "F":
        return np.asarray(image, dtype=np.float32).copy()
    if mode in ("L", "RGB"):
        return np.asarray(image).copy()
    if mode in ("LA", "RGBA"):
        return np.asarray(image.convert(mode[:-1])).copy()
    # Palette, 1-bit, CMYK, YCbCr, LAB, HSV: convert to RGB, which is well defined for each of them.
    return np.asarray(image.convert("RGB")).copy()


def decode_image(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Decode PNG/JPEG/TIFF/BMP bytes to a numpy frame at native depth (uint8 or uint16, HxW or HxWx3).

    Raises ImageDecodeError for anything that is not a complete still image, or one above max_pixels.
    """
    if not data:
        raise ImageDecodeError("empty file: send the image bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise ImageDecodeError(f"image is {image.width}x{image.height}, above the limit of {max_pixels} pixels")
            if getattr(image, "n_frames", 1) > 1:
                raise ImageDecodeError("animated or multi-page images are not supported: send single frames")
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            image.load()
            if image.format == "PNG":
                check_png_rows(data)
            return pil_to_array(image)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image is too large to decode safely: {exc}") from exc
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc


def png_scanline_bytes(width: int, height: int, bit_depth: int, colour_type: int, interlaced: bool) -> int:
    """Bytes a PNG's IDAT stream inflates to: every (sub-image) row with its filter byte."""
    bits_per_pixel = bit_depth * PNG_SAMPLES_PER_PIXEL[colour_type]
    total = 0
    for first_column, first_row, column_step, row_step in PNG_ADAM7_PASSES if interlaced else ((0, 0, 1, 1),):
        columns = max(0, -(-(width - first_column) // column_step))
        rows = max(0, -(-(height - first_row) // row_step))
        if columns and rows:
            total += rows * (1 + (columns * bits_per_pixel + 7) // 8)
    return total


def png_idat_payloads(data: bytes) -> list[bytes]:
    """The payloads of the first run of IDAT chunks (the image data), in order; chunk CRCs are Pillow's job."""
    payloads: list[bytes] = []
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, tag = struct.unpack(">I4s", data[position : position + 8])
        if tag == b"IDAT":
            payloads.append(data[position + 8 : position + 8 + length])
        elif payloads or tag == b"IEND":
            break
        position += 12 + length
    return payloads


def inflated_size(payloads: list[bytes], needed: int) -> int:
    """How many bytes the zlib stream split over `payloads` inflates to, counted up to `needed` in bounded steps."""
    inflater = zlib.decompressobj()
    produced = 0
    for payload in payloads:
        while payload and produced < needed and not inflater.eof:
            produced += len(inflater.decompress(payload, min(INFLATE_STEP_BYTES, needed - produced)))
            payload = inflater.unconsumed_tail
    if produced < needed and not inflater.eof:  # output zlib still holds after the last input byte
        produced += len(inflater.decompress(b"", needed - produced))
    return produced


def check_png_rows(data: bytes) -> None:
    """Raise ImageDecodeError if a PNG's pixel data ends before the rows its header declares.

    Pillow stops without an error when the zlib stream ends cleanly before the last row, and leaves the missing
    rows zero-filled; a frame like that must not reach the model as if it were whole.
    """
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return
    width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if colour_type not in PNG_SAMPLES_PER_PIXEL:
        return  # Pillow has already refused it
    needed = png_scanline_bytes(width, height, bit_depth, colour_type, interlaced=interlace == 1)
    produced = inflated_size(png_idat_payloads(data), needed)
    if produced < needed:
        raise ImageDecodeError(
            f"image file is truncated: its pixel data holds {produced} of the {needed} bytes that the "
            f"{width}x{height} header declares (rows are missing)"
        )


def load_image(path: str) -> np.ndarray:
    """Read an image file from disk at native depth (see decode_image)."""
    with open(path, "rb") as handle:
        return decode_image(handle.read())
