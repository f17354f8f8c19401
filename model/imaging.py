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

import numpy as np
from PIL import Image, ImageFile

AGC_LOW_PERCENTILE = 0.5
AGC_HIGH_PERCENTILE = 99.99


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
            return pil_to_array(image)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image is too large to decode safely: {exc}") from exc
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise ImageDecodeError(f"cannot decode image: {exc}") from exc


def load_image(path: str) -> np.ndarray:
    """Read an image file from disk at native depth (see decode_image)."""
    with open(path, "rb") as handle:
        return decode_image(handle.read())
