"""Test material for video jobs: MP4s with bright moving squares at known positions, and a detector that
finds bright squares by thresholding (deterministic, so the pipeline can be checked without a trained model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BACKGROUND = 16
TARGET_SIZE = 4


@dataclass(frozen=True)
class MovingTarget:
    """A TARGET_SIZE square whose top-left corner moves from (x0, y0) by (vx, vy) pixels per frame."""

    x0: float
    y0: float
    vx: float
    vy: float

    def corner(self, frame: int) -> tuple[int, int]:
        return round(self.x0 + self.vx * frame), round(self.y0 + self.vy * frame)

    def centre(self, frame: int) -> tuple[float, float]:
        x, y = self.corner(frame)
        return x + TARGET_SIZE / 2, y + TARGET_SIZE / 2


DEFAULT_TARGETS = (MovingTarget(8, 30, 1.5, 0.25), MovingTarget(140, 90, -1.25, -0.5))


def render_frame(frame: int, width: int, height: int, targets: tuple[MovingTarget, ...]) -> np.ndarray:
    image = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    for target in targets:
        x, y = target.corner(frame)
        image[max(y, 0) : max(y + TARGET_SIZE, 0), max(x, 0) : max(x + TARGET_SIZE, 0)] = 255
    return image


def write_test_video(
    path: Path,
    frames: int = 64,
    width: int = 160,
    height: int = 128,
    fps: int = 25,
    targets: tuple[MovingTarget, ...] = DEFAULT_TARGETS,
    codec: str = "libx264",
    gop: int = 12,
) -> Path:
    """Encode the moving squares with PyAV (H.264 yuv420p by default; keyframe every `gop` frames)."""
    from tools.traffic import write_clip

    pictures = (render_frame(index, width, height, targets) for index in range(frames))
    options = {"crf": "10", "preset": "veryfast"} if codec == "libx264" else None
    write_clip(pictures, path, fps=fps, codec=codec, gop=gop, options=options)
    return path


def bright_components(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes (x1, y1, x2, y2), exclusive ends, of the 4-connected True regions of a small mask."""
    remaining = {(int(y), int(x)) for y, x in np.argwhere(mask)}
    boxes = []
    while remaining:
        stack = [remaining.pop()]
        ys, xs = [], []
        while stack:
            y, x = stack.pop()
            ys.append(y)
            xs.append(x)
            for neighbour in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if neighbour in remaining:
                    remaining.remove(neighbour)
                    stack.append(neighbour)
        boxes.append((min(xs), min(ys), max(xs) + 1, max(ys) + 1))
    return sorted(boxes)


class BrightSpotDetector:
    """Finds bright squares by thresholding; implements the `detect` call a chunk job makes on the model."""

    def __init__(self, threshold: int = 128, fail_after_calls: int | None = None) -> None:
        self.threshold = threshold
        self.fail_after_calls = fail_after_calls
        self.batch_sizes: list[int] = []

    def detect(
        self,
        frames: list[np.ndarray],
        conf: float,
        iou: float,
        max_det: int,
        imgsz: int | None,
        pixel_scale: float | None = None,
        tta: str | None = None,
    ) -> list[list[dict[str, Any]]]:
        if self.fail_after_calls is not None and len(self.batch_sizes) >= self.fail_after_calls:
            raise RuntimeError("detector exploded")
        self.batch_sizes.append(len(frames))
        results = []
        for frame in frames:
            boxes = bright_components(frame.max(axis=2) > self.threshold)
            results.append(
                [
                    {"box": [float(v) for v in box], "score": 0.9, "class_id": 0, "class_name": "target"}
                    for box in boxes[:max_det]
                ]
            )
        return results
