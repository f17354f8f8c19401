"""Painting on float32 canvases, in place: rotated ellipses and rectangles, line segments, speck stamps,
window lattices and blurred patchworks. Background families (backgrounds.py) and clutter objects (clutter.py)
are drawn with these.
"""

from __future__ import annotations

import numpy as np

from model.synth.fields import gaussian_blur


def _window(canvas: np.ndarray, cx: float, cy: float, reach: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    height, width = canvas.shape
    x0, x1 = max(0, int(cx - reach)), min(width, int(cx + reach) + 2)
    y0, y1 = max(0, int(cy - reach)), min(height, int(cy + reach) + 2)
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    return slice(y0, y1), slice(x0, x1), xs, ys


def paint_shape(
    canvas: np.ndarray,
    cx: float,
    cy: float,
    half_x: float,
    half_y: float,
    angle: float,
    value: float,
    kind: str = "ellipse",
    edge: float = 0.0,
    replace: bool = False,
) -> None:
    """Paint a rotated ellipse or rectangle (semi-axes half_x, half_y) in place; `edge` softens the border."""
    rows, cols, xs, ys = _window(canvas, cx, cy, max(half_x, half_y) + edge + 1.0)
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return
    along = xs * np.cos(angle) + ys * np.sin(angle)
    across = ys * np.cos(angle) - xs * np.sin(angle)
    if kind == "ellipse":
        distance = (np.hypot(along / max(half_x, 0.3), across / max(half_y, 0.3)) - 1.0) * min(half_x, half_y)
    else:
        distance = np.maximum(np.abs(along) - half_x, np.abs(across) - half_y)
    cover = np.clip(0.5 - distance / max(edge, 0.5), 0.0, 1.0) if edge > 0 else (distance <= 0).astype(np.float32)
    region = canvas[rows, cols]
    canvas[rows, cols] = region * (1.0 - cover) + value * cover if replace else region + value * cover


def paint_segment(
    canvas: np.ndarray, start: tuple[float, float], end: tuple[float, float], thickness: float, value: float
) -> None:
    """Add an anti-aliased line segment of the given thickness (pixels) in place."""
    (x0, y0), (x1, y1) = start, end
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    rows, cols, xs, ys = _window(canvas, cx, cy, np.hypot(x1 - x0, y1 - y0) / 2.0 + thickness + 1.0)
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return
    dx, dy = x1 - x0, y1 - y0
    length_sq = max(dx * dx + dy * dy, 1e-6)
    t = np.clip(((xs + cx - x0) * dx + (ys + cy - y0) * dy) / length_sq, 0.0, 1.0)
    distance = np.hypot(xs + cx - (x0 + t * dx), ys + cy - (y0 + t * dy))
    canvas[rows, cols] += value * np.clip(thickness / 2.0 - distance + 0.5, 0.0, 1.0)


SPECK_STAMPS: dict[str, np.ndarray] = {
    "dot": np.array([[1.0]], dtype=np.float32),
    "pair": np.array([[1.0, 0.7]], dtype=np.float32),
    "plus": np.array([[0.0, 0.45, 0.0], [0.45, 1.0, 0.45], [0.0, 0.45, 0.0]], dtype=np.float32),
    "spot": np.outer([0.3, 1.0, 0.3], [0.3, 1.0, 0.3]).astype(np.float32),
    "square": np.ones((2, 2), dtype=np.float32),
}


def add_specks(canvas: np.ndarray, rows: np.ndarray, cols: np.ndarray, levels: np.ndarray, stamp: np.ndarray) -> None:
    """Add `stamp` (top-left anchored) scaled by `levels` at the given pixels, in place, clipped to the canvas."""
    height, width = canvas.shape
    for (dy, dx), weight in np.ndenumerate(stamp):
        if weight == 0:
            continue
        y, x = rows + dy, cols + dx
        inside = (y < height) & (x < width)
        np.add.at(canvas, (y[inside], x[inside]), levels[inside] * weight)


def speck_crowd(rng: np.random.Generator, score: np.ndarray, fraction: float, level: float) -> np.ndarray:
    """Specks at a random subset of the pixels where `score` is in its top `fraction`: glints, flecks, lights.

    A crowd of look-alikes is never a target: the model has to learn that a blip among many similar blips
    is clutter. Stamps and strengths vary per crowd and per speck.
    """
    canvas = np.zeros(score.shape, dtype=np.float32)
    threshold = np.quantile(score[::2, ::2], 1.0 - fraction)
    rows, cols = np.nonzero(score > threshold)
    keep = rng.random(len(rows)) < rng.uniform(0.2, 0.8)
    rows, cols = rows[keep], cols[keep]
    stamp = SPECK_STAMPS[str(rng.choice(list(SPECK_STAMPS)))]
    levels = (level * rng.lognormal(0.0, 0.4, len(rows))).astype(np.float32)
    add_specks(canvas, rows, cols, levels, stamp)
    return canvas


def lattice(
    rng: np.random.Generator, canvas: np.ndarray, box: tuple[float, float, float, float], angle: float, value: float
) -> None:
    """Add a regular grid of small warm dots (windows, panels, lamps) inside a rotated box (cx, cy, hx, hy)."""
    cx, cy, half_x, half_y = box
    rows, cols, xs, ys = _window(canvas, cx, cy, max(half_x, half_y) + 1.0)
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return
    along = xs * np.cos(angle) + ys * np.sin(angle) + half_x
    across = ys * np.cos(angle) - xs * np.sin(angle) + half_y
    period_x, period_y = rng.uniform(2.5, 9.0), rng.uniform(2.5, 9.0)
    dot = rng.uniform(0.8, min(period_x, period_y, 3.0) - 0.5)  # periods are at least 2.5 px
    inside = (along >= 0) & (along < 2 * half_x) & (across >= 0) & (across < 2 * half_y)
    lit = (np.mod(along, period_x) < dot) & (np.mod(across, period_y) < dot) & inside
    lit &= rng.random(lit.shape) < rng.uniform(0.6, 1.0)
    canvas[rows, cols] += value * lit.astype(np.float32)


def blurred_shapes(
    rng: np.random.Generator, height: int, width: int, count: int, size_range: tuple[float, float], blur: float
) -> np.ndarray:
    """Overlapping random ellipses and rectangles with random levels, blurred (patchwork texture)."""
    canvas = np.zeros((height, width), dtype=np.float32)
    for _ in range(count):
        half_x = rng.uniform(*size_range) / 2.0
        paint_shape(
            canvas,
            rng.uniform(0, width),
            rng.uniform(0, height),
            half_x,
            half_x * rng.uniform(0.3, 1.0),
            rng.uniform(0, np.pi),
            float(rng.normal()),
            kind="rect" if rng.random() < 0.5 else "ellipse",
            replace=True,
        )
    return gaussian_blur(canvas, blur)
