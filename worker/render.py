"""The annotated MP4 of a video job (boxes at least `min_box_px` wide, track ids, short trails) and annotated
stream snapshots."""

from __future__ import annotations

from collections import deque
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from jobs.video import FrameResult, TrackedDetection
from worker.frames import frame_rate, iter_frames

PALETTE = [
    (255, 64, 64),
    (64, 220, 64),
    (80, 160, 255),
    (255, 200, 0),
    (255, 64, 255),
    (0, 230, 230),
    (255, 140, 40),
    (180, 120, 255),
]
UNTRACKED_COLOUR = (200, 200, 200)


def render_annotated(
    input_path: str | Path,
    output_path: str | Path,
    frames: list[FrameResult],
    frame_stride: int = 1,
    trail_length: int = 12,
    min_box_px: int = 14,
) -> None:
    """Write an H.264 (yuv420p) MP4 of the processed frames with boxes, track ids and short trails.

    Tiny targets would be invisible under a box of their own size, so every box is drawn at least
    `min_box_px` wide around its centre. The output runs at fps / frame_stride (one picture per processed
    frame). It is written next to the target and renamed into place when complete.
    """
    import av
    from PIL import Image, ImageDraw

    if not frames:
        raise ValueError("no frames to render")
    output_path = Path(output_path)
    temporary = output_path.with_name(f".{output_path.name}.tmp.mp4")
    detections_by_index = {frame.index: frame.detections for frame in frames}
    trails: dict[int, deque[tuple[float, float]]] = {}
    with av.open(str(input_path), mode="r") as source:
        source_stream = source.streams.video[0]
        fps = frame_rate(source_stream)
        width, height = source_stream.codec_context.width, source_stream.codec_context.height
    width, height = width - width % 2, height - height % 2  # yuv420p needs even sides
    with av.open(str(temporary), mode="w", format="mp4") as target:
        stream = target.add_stream("libx264", rate=Fraction(fps / frame_stride).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        last_index = max(detections_by_index) + 1
        for decoded in iter_frames(input_path, 0, last_index, frame_stride):
            image = Image.fromarray(decoded.image[:height, :width])
            _draw_detections(ImageDraw.Draw(image), detections_by_index.get(decoded.index, []), trails, min_box_px)
            for track_id in list(trails):
                if len(trails[track_id]) > trail_length:
                    trails[track_id].popleft()
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")):
                target.mux(packet)
        for packet in stream.encode():
            target.mux(packet)
    temporary.replace(output_path)


def annotate_frame(image: np.ndarray, detections: list[TrackedDetection], min_box_px: int = 14) -> np.ndarray:
    """One RGB frame with its boxes and track ids drawn (a live stream's snapshot)."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(image)
    _draw_detections(ImageDraw.Draw(picture), detections, {}, min_box_px)
    return np.asarray(picture)


def _draw_detections(
    draw: Any, detections: list[TrackedDetection], trails: dict[int, deque[tuple[float, float]]], min_box_px: int
) -> None:
    for detection in detections:
        x1, y1, x2, y2 = (float(value) for value in detection.box)
        cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        half_width = max((x2 - x1) / 2.0, min_box_px / 2.0) + 1.0
        half_height = max((y2 - y1) / 2.0, min_box_px / 2.0) + 1.0
        track_id = detection.track_id
        colour = UNTRACKED_COLOUR if track_id is None else PALETTE[(int(track_id) - 1) % len(PALETTE)]
        draw.rectangle([cx - half_width, cy - half_height, cx + half_width, cy + half_height], outline=colour, width=2)
        if track_id is None:
            continue
        draw.text((cx - half_width, cy - half_height - 11), str(track_id), fill=colour)
        trail = trails.setdefault(int(track_id), deque())
        trail.append((cx, cy))
        if len(trail) > 1:
            draw.line(list(trail), fill=colour, width=1)
