"""Synthetic material for the benchmarks, the tests and the live monitoring stack: frames, PNGs, clips and
random-init checkpoints.

Two kinds of frames: `synthetic_frames` look like infrared (a smooth background, sensor noise, a few small
bright targets) and feed the benchmarks; `speck_frame` is a small dark frame with bright specks, 8 or 16 bit,
grey or RGB, for requests whose content does not matter (`png_bytes`). Clips are encoded with PyAV
(`write_clip`, `clip_bytes`); `synthetic_clip` writes an infrared-like one with `model.synth` and caches it.
torch and the model are imported only by the functions that need them.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

SYNTH_FRAMES = 16


# -------------------------------------------------------------------------------------------- frames


def synthetic_frames(width: int, height: int, count: int = SYNTH_FRAMES, seed: int = 0) -> list[np.ndarray]:
    """Grey infrared-like frames: smooth background, sensor noise and a few small bright targets."""
    rng = np.random.default_rng(seed)
    frames = []
    rows, cols = np.mgrid[0:height, 0:width]
    for _ in range(count):
        frame = 60.0 + 30.0 * np.sin(cols / max(width, 1) * 3.0 + rng.uniform(0, 6)) + rng.normal(0, 4, (height, width))
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            frame += 120.0 * np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * rng.uniform(1.0, 2.5) ** 2))
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def speck_frame(width: int = 96, height: int = 64, seed: int = 0, bits: int = 8, channels: int = 1) -> np.ndarray:
    """A small dark frame with three bright 3x3 specks, 8 or 16 bit, grey (H, W) or RGB (H, W, 3)."""
    rng = np.random.default_rng(seed)
    peak = 65535 if bits == 16 else 255
    dtype = np.uint16 if bits == 16 else np.uint8
    frame = rng.integers(0, peak // 6, size=(height, width), dtype=dtype)
    for _ in range(3):
        y, x = int(rng.integers(2, height - 2)), int(rng.integers(2, width - 2))
        frame[y - 1 : y + 2, x - 1 : x + 2] = peak
    if channels == 3:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    return frame


def encode_png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def png_bytes(width: int = 96, height: int = 64, seed: int = 0, bits: int = 8, channels: int = 1) -> bytes:
    """`speck_frame` as a PNG."""
    return encode_png(speck_frame(width, height, seed, bits, channels))


# --------------------------------------------------------------------------------------------- clips


def write_clip(
    frames: Iterable[np.ndarray],
    destination: Path | io.BytesIO,
    *,
    fps: int = 25,
    codec: str = "libx264",
    gop: int | None = None,
    options: dict[str, str] | None = None,
) -> None:
    """Encode RGB uint8 frames (H, W, 3), all one size, in yuv420p with PyAV; the container follows the path's
    suffix (MP4 into a buffer). `gop`: a keyframe every that many frames; `options`: the codec's (e.g. preset)."""
    import av

    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    target, container_format = (str(destination), None) if isinstance(destination, Path) else (destination, "mp4")
    with av.open(target, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if gop is not None:
            stream.codec_context.gop_size = gop
        if options:
            stream.options = options
        for frame in itertools.chain([first], frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def clip_bytes(frames: Iterable[np.ndarray], **options: object) -> bytes:
    """`write_clip` into memory: the MP4's bytes."""
    buffer = io.BytesIO()
    write_clip(frames, buffer, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def moving_square_clip(frames: int = 200, width: int = 160, height: int = 128) -> bytes:
    """An H.264 MP4 of a bright 4-pixel square crossing a dark frame."""

    def frame(index: int) -> np.ndarray:
        image = np.full((height, width, 3), 16, dtype=np.uint8)
        x = int(8 + 0.7 * index) % (width - 8)
        image[60:64, x : x + 4] = 255
        return image

    return clip_bytes(frame(index) for index in range(frames))


def synthetic_clip(work_dir: Path, seconds: float, width: int, height: int, fps: float) -> Path:
    """An infrared-like clip with moving small targets (`model.synth`), cached in `work_dir` by its parameters."""
    from model.synth.config import SynthConfig
    from model.synth.dataset import write_video

    frames = round(seconds * fps)
    out_dir = work_dir / f"clip-{frames}f-{width}x{height}-{fps:g}fps"
    video = out_dir / "video.mp4"
    if not video.is_file():
        logger.info("writing a %g s %dx%d clip to %s", seconds, width, height, out_dir)
        write_video(out_dir, frames, SynthConfig(width=width, height=height), seed=0, fps=fps, progress=True)
    return video


def first_frame_png(clip: Path) -> bytes:
    """The clip's first frame as an RGB PNG."""
    import av

    with av.open(str(clip)) as container:
        return encode_png(next(container.decode(video=0)).to_ndarray(format="rgb24"))


# ---------------------------------------------------------------------------------------- checkpoints


def random_checkpoint(
    path: Path,
    imgsz: int = 640,
    *,
    seed: int = 0,
    pixel_scale: float | None = None,
    provenance: dict | None = None,
) -> Path:
    """A random-init masenet-n with one class ("target"), saved the way shipped weights are. The same `seed`
    gives the same weights; the caller's torch random state is left alone."""
    import torch

    from model.checkpoint import save_checkpoint
    from model.masenet import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model("masenet", scale="n", nc=1)
    return save_checkpoint(
        path, model, class_names=["target"], imgsz=imgsz, pixel_scale=pixel_scale, provenance=provenance
    )


def bench_weights(work_dir: Path, configured: Path | None = None) -> Path:
    """Weights for a benchmark: `configured`, else MASENET_WEIGHTS, else the shipped file, else a random-init
    masenet-n in `work_dir` (the cost per frame is the same)."""
    from jobs.settings import Settings
    from model.checkpoint import default_weights_path

    configured = configured or Settings().weights
    if configured is not None:
        return Path(configured)
    shipped = default_weights_path()
    if shipped.is_file():
        return shipped
    path = work_dir / "random-masenet-n.safetensors"
    if not path.is_file():
        logger.warning("no shipped weights: timing a random-init masenet-n (same cost per frame)")
        random_checkpoint(path, imgsz=640)
    return path
