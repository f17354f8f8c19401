"""Infrared background scenes from several noise constructions, and clutter objects that are not targets.

A scene is a float32 (H, W) radiance map in arbitrary units with a contrast of order one; the sensor model
(model/synth/sensor.py) turns it into counts. Two recipe sets exist:

- default families: sky with clouds, sea with sun glint, ground/urban clutter, horizons mixing two of them,
  and near-uniform scenes. They draw on 1/f^beta spectral noise, value noise and blurred random shapes, mixed
  with random weights, so no single texture statistic gives a family away.
- holdout families: a deliberately different construction (Gaussian-sum cloud banks, plane-wave swell with
  cross-shaped glints, city blocks with window lattices, cellular terrain, striped flat scenes, ragged
  ridgelines). They exist only to measure how well a model trained on the default families generalises.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Family = Callable[[np.random.Generator, int, int], np.ndarray]


# ----------------------------------------------------------------------------------------------- primitives
def smoothstep(values: np.ndarray) -> np.ndarray:
    """Cubic ramp from 0 (at or below 0) to 1 (at or above 1)."""
    values = np.clip(values, 0.0, 1.0)
    return values * values * (3.0 - 2.0 * values)


def normalise(field: np.ndarray) -> np.ndarray:
    """Zero mean and unit standard deviation (a flat field stays zero), as float32."""
    field = field.astype(np.float32, copy=False)
    std = float(field.std())
    return (field - field.mean()) / std if std > 0 else np.zeros_like(field)


def spectral_noise(
    rng: np.random.Generator, height: int, width: int, beta: float, stretch: float = 1.0, angle: float = 0.0
) -> np.ndarray:
    """Gaussian noise with a 1/f^beta power spectrum, elongated `stretch` times along direction `angle`."""
    freq_y = np.fft.fftfreq(height).astype(np.float32)[:, None]
    freq_x = np.fft.rfftfreq(width).astype(np.float32)[None, :]
    along = (freq_x * np.cos(angle) + freq_y * np.sin(angle)) * stretch
    across = freq_y * np.cos(angle) - freq_x * np.sin(angle)
    radius_sq = along * along + across * across
    radius_sq[0, 0] = 1.0
    amplitude = radius_sq ** np.float32(-beta / 4.0)
    amplitude[0, 0] = 0.0
    shape = amplitude.shape
    real = rng.standard_normal(shape, dtype=np.float32)
    imag = rng.standard_normal(shape, dtype=np.float32)
    return normalise(np.fft.irfft2(amplitude * (real + 1j * imag), s=(height, width)))


def _interpolation_axis(rng: np.random.Generator, length: int, cell: float) -> tuple[np.ndarray, np.ndarray]:
    position = (np.arange(length, dtype=np.float32) + rng.uniform(0.0, cell)) / cell
    index = np.floor(position).astype(np.intp)
    return index, smoothstep(position - index).astype(np.float32)


def value_noise(
    rng: np.random.Generator, height: int, width: int, cell: float, octaves: int = 1, persistence: float = 0.5
) -> np.ndarray:
    """Random values on a lattice of `cell` pixels, smoothly interpolated, summed over octaves."""
    total = np.zeros((height, width), dtype=np.float32)
    weight = 1.0
    for octave in range(octaves):
        step = max(cell / 2**octave, 1.0)
        rows, row_t = _interpolation_axis(rng, height, step)
        cols, col_t = _interpolation_axis(rng, width, step)
        lattice = rng.standard_normal((rows[-1] + 2, cols[-1] + 2), dtype=np.float32)
        band = lattice[rows] * (1.0 - row_t)[:, None] + lattice[rows + 1] * row_t[:, None]
        total += weight * (band[:, cols] * (1.0 - col_t) + band[:, cols + 1] * col_t)
        weight *= persistence
    return normalise(total)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Plain bilinear resize (corner-aligned) of a small field to (height, width)."""
    rows = np.linspace(0.0, image.shape[0] - 1.0, height, dtype=np.float32)
    cols = np.linspace(0.0, image.shape[1] - 1.0, width, dtype=np.float32)
    row0 = np.minimum(rows.astype(np.intp), image.shape[0] - 2)
    col0 = np.minimum(cols.astype(np.intp), image.shape[1] - 2)
    row_t = (rows - row0)[:, None]
    col_t = cols - col0
    band = image[row0] * (1.0 - row_t) + image[row0 + 1] * row_t
    return (band[:, col0] * (1.0 - col_t) + band[:, col0 + 1] * col_t).astype(np.float32)


def _convolve_axis(image: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    radius = len(kernel) // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    padded = np.pad(image, pad, mode="reflect")
    length = image.shape[axis]
    out = np.zeros(image.shape, dtype=np.float32)
    for offset, tap in enumerate(kernel):
        out += tap * (padded[offset : offset + length] if axis == 0 else padded[:, offset : offset + length])
    return out


def box_blur(image: np.ndarray, radius: int, axes: tuple[int, ...] = (0, 1)) -> np.ndarray:
    """Moving average of width 2 * radius + 1 along the given axes (running sums; cost independent of radius)."""
    out = image.astype(np.float32, copy=False)
    if radius < 1:
        return out
    size = 2 * radius + 1
    for axis in axes:
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius + 1, radius)
        sums = np.cumsum(np.pad(out, pad, mode="reflect"), axis=axis, dtype=np.float64)
        length = out.shape[axis]
        head = sums[size : size + length] if axis == 0 else sums[:, size : size + length]
        tail = sums[:length] if axis == 0 else sums[:, :length]
        out = ((head - tail) / size).astype(np.float32)
    return out


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur: an exact separable kernel for small sigma, three box passes for large sigma."""
    image = image.astype(np.float32, copy=False)
    if sigma < 0.15:
        return image
    radius = int(np.ceil(3.0 * sigma))
    if radius > 9:
        box_radius = max(1, int(round((np.sqrt(4.0 * sigma * sigma + 1.0) - 1.0) / 2.0)))
        return box_blur(box_blur(box_blur(image, box_radius), box_radius), box_radius)
    taps = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    return _convolve_axis(_convolve_axis(image, kernel, 0), kernel, 1)


# ------------------------------------------------------------------------------------------- shape painting
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


def _mix(rng: np.random.Generator, fields: list[np.ndarray], scales: list[tuple[float, float]]) -> np.ndarray:
    return sum(field * rng.uniform(*scale) for field, scale in zip(fields, scales, strict=True))


# ------------------------------------------------------------------------------------------ default families
def sky(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Sky warming towards the horizon, with thresholded multi-octave clouds (warm or, less often, cold)."""
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    scene = rng.uniform(0.3, 3.0) * rows ** rng.uniform(0.7, 3.0) + rng.normal(0, 0.3) * np.linspace(-1, 1, width)
    if rng.random() < 0.85:
        if rng.random() < 0.6:
            base = spectral_noise(rng, height, width, rng.uniform(2.4, 3.6), rng.uniform(1.0, 3.5), rng.normal(0, 0.2))
        else:
            base = value_noise(rng, height, width, rng.uniform(20, 90), octaves=4, persistence=rng.uniform(0.4, 0.6))
        cover = smoothstep((base - rng.uniform(-1.2, 1.4)) / rng.uniform(0.3, 1.6))
        inside = value_noise(rng, height, width, rng.uniform(6, 40), octaves=3) * rng.uniform(0.05, 0.5)
        polarity = 1.0 if rng.random() < 0.75 else -1.0
        scene = scene + cover * (polarity * rng.uniform(0.5, 4.0) + inside)
    return scene + spectral_noise(rng, height, width, rng.uniform(1.0, 2.0)) * rng.uniform(0.0, 0.12)


def sea(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Sea with anisotropic waves growing towards the viewer and, often, a band of sun-glint specks."""
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    far = spectral_noise(rng, height, width, rng.uniform(1.6, 2.4), rng.uniform(2.5, 7.0), rng.normal(0, 0.1))
    near = spectral_noise(rng, height, width, rng.uniform(2.2, 3.2), rng.uniform(1.5, 3.5), rng.normal(0, 0.2))
    waves = (far * (1.0 - rows) + near * rows) * (rng.uniform(0.2, 1.0) * (0.3 + rows))
    scene = rng.uniform(-1.5, 1.5) * rows + waves
    if rng.random() < 0.7:
        specks = spectral_noise(rng, height, width, rng.uniform(0.6, 1.4), rng.uniform(1.5, 3.5))
        centre, spread = rng.uniform(0.1, 0.9) * width, rng.uniform(0.08, 0.5) * width
        band = np.exp(-(((np.arange(width, dtype=np.float32) - centre) / spread) ** 2))[None, :]
        score = specks * (band * (0.3 + rows))
        threshold = np.quantile(score[::2, ::2], 1.0 - rng.uniform(0.001, 0.012))
        glint = np.clip(score - threshold, 0.0, None)
        peak = float(glint.max())
        if peak > 0:
            scene = scene + np.sqrt(glint / peak) * rng.uniform(2.0, 12.0)
    if rng.random() < 0.5:
        crests = waves * (0.5 + rng.random()) + rng.normal(0, 0.3, waves.shape).astype(np.float32)
        scene = scene + speck_crowd(rng, crests, rng.uniform(0.0005, 0.02), rng.uniform(1.0, 10.0))
    if rng.random() < 0.5:
        rollers = long_crests(rng, height, width)
        scene = scene + rollers * rng.uniform(0.1, 0.8) * (0.3 + rows)
        local = normalise(rollers - gaussian_blur(rollers, rng.uniform(3.0, 10.0)))  # each crest, not the highest
        crests = local + rng.normal(0, rng.uniform(0.05, 0.3), rollers.shape).astype(np.float32)
        scene = scene + speck_crowd(rng, crests, rng.uniform(0.0005, 0.01), rng.uniform(1.0, 10.0))
    return scene


def long_crests(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Long, roughly level wave crests, squeezed towards the top of the frame as if seen towards a horizon.

    Glint crowds placed on these crests line up along them, as sun glints on a swell do; the sea's other
    glint crowds are scattered.
    """
    field = spectral_noise(rng, height, width, rng.uniform(1.8, 2.8), rng.uniform(3.0, 10.0), rng.normal(0, 0.15))
    depth = np.linspace(0.0, 1.0, height, dtype=np.float32)
    source = (height - 1) * (1.0 - (1.0 - depth) ** rng.uniform(1.2, 1.8))
    lower = np.minimum(source.astype(np.intp), height - 2)
    weight = (source - lower)[:, None]
    return normalise(field[lower] * (1.0 - weight) + field[lower + 1] * weight)


def ground(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Vegetation texture and fields; often urban: roads and buildings with hard warm edges; often cold pits."""
    short = min(height, width)
    scene = _mix(
        rng,
        [
            value_noise(rng, height, width, rng.uniform(2.5, 10), octaves=3, persistence=rng.uniform(0.4, 0.7)),
            spectral_noise(rng, height, width, rng.uniform(1.4, 2.4), rng.uniform(1.0, 2.0), rng.uniform(0, np.pi)),
            blurred_shapes(rng, height, width, int(rng.integers(3, 16)), (0.1 * short, 0.7 * short), rng.uniform(0, 3)),
        ],
        [(0.1, 0.6), (0.2, 0.9), (0.3, 1.5)],
    )
    for _ in range(int(rng.integers(0, 4))):
        angle = rng.uniform(0, np.pi)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        reach = 2.0 * (width + height)
        start = (cx - reach * np.cos(angle), cy - reach * np.sin(angle))
        end = (cx + reach * np.cos(angle), cy + reach * np.sin(angle))
        paint_segment(scene, start, end, rng.uniform(1.5, 6.0), rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 2.0))
    if rng.random() < 0.55:
        grid_angle = rng.normal(0, 0.15) if rng.random() < 0.6 else rng.uniform(0, np.pi)
        for _ in range(int(rng.integers(3, 40))):
            half_x, half_y = rng.uniform(2.5, 16), rng.uniform(2.5, 16)
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            level = rng.uniform(0.3, 3.0) * (1.0 if rng.random() < 0.8 else -0.5)
            paint_shape(scene, cx, cy, half_x, half_y, grid_angle, level, kind="rect", replace=False)
            if rng.random() < 0.3:
                lattice(rng, scene, (cx, cy, half_x, half_y), grid_angle, rng.uniform(0.3, 2.0))
            if rng.random() < 0.4:
                rim = rng.uniform(0.3, 1.5)
                paint_shape(scene, cx, cy, half_x + 1, half_y + 1, grid_angle, rim, kind="rect")
                paint_shape(scene, cx, cy, half_x, half_y, grid_angle, -rim, kind="rect")
    if rng.random() < 0.45:
        if rng.random() < 0.5:  # sun flecks scattered over patches
            flecks = value_noise(rng, height, width, rng.uniform(20, 80), octaves=2) + rng.random((height, width))
        else:  # warm stones and tree tops on the texture's own bright ridges
            flecks = normalise(scene) + rng.normal(0, 0.05, scene.shape)
        scene = scene + speck_crowd(rng, flecks.astype(np.float32), rng.uniform(0.001, 0.015), rng.uniform(0.5, 4.0))
    if rng.random() < 0.4:
        scene = scene - cold_pits(rng, height, width) * rng.uniform(1.0, 8.0)
    return scene


def cold_pits(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Depth map (>= 0, to subtract) of small ragged pits: puddles, burrows and shadows, scattered or in groups.

    Compact cold spots are common on the ground and rare as targets: a cold blob among many is clutter.
    """
    canvas = np.zeros((height, width), dtype=np.float32)
    groups = rng.uniform(0, 1, size=(int(rng.integers(1, 6)), 2)) * [width, height]
    spread = rng.uniform(0.05, 0.4) * min(height, width)
    for _ in range(int(rng.poisson(rng.uniform(5.0, 40.0) * height * width / 256**2))):
        if rng.random() < 0.5:
            cx, cy = groups[rng.integers(len(groups))] + rng.normal(0, spread, 2)
        else:
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        for _ in range(int(rng.integers(1, 3))):  # one or two overlapping lobes make a ragged outline
            half = rng.uniform(0.7, 4.0)
            centre_x, centre_y = cx + rng.normal(0, half / 2), cy + rng.normal(0, half / 2)
            aspect, angle = rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
            depth, edge = rng.lognormal(0.0, 0.5), rng.uniform(0.3, 1.5)
            paint_shape(canvas, centre_x, centre_y, half, half * aspect, angle, depth, edge=edge)
    return canvas


def uniform(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Plain scene: a weak gradient and faint low-frequency variation (noise dominates after the sensor)."""
    rows = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    cols = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    tilt = rng.normal(0, 0.1, size=2)
    faint = spectral_noise(rng, height, width, rng.uniform(2.0, 3.5)) * rng.uniform(0.0, 0.15)
    return tilt[0] * rows + tilt[1] * cols + faint


def horizon(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Sky above a tilted horizon, sea or ground below, often with a warm haze line along it."""
    upper = sky(rng, height, width)
    lower = (sea if rng.random() < 0.5 else ground)(rng, height, width) + rng.uniform(-1.0, 3.0)
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :] - width / 2.0
    line = rng.uniform(0.2, 0.8) * height + np.tan(rng.normal(0, 0.05)) * cols
    below = 1.0 / (1.0 + np.exp(-(rows - line) / rng.uniform(0.3, 2.5)))
    haze = np.exp(-(((rows - line) / rng.uniform(1.0, 8.0)) ** 2)) * rng.uniform(0.0, 2.0)
    return upper * (1.0 - below) + lower * below + haze


# ------------------------------------------------------------------------------------------ holdout families
def cloudbank(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Sum of large anisotropic Gaussian puffs with log-normal strengths, on a coarse grid, plus faint ripples."""
    coarse_h, coarse_w = max(height // 4, 8), max(width // 4, 8)
    ys = np.arange(coarse_h, dtype=np.float32)[:, None]
    xs = np.arange(coarse_w, dtype=np.float32)[None, :]
    field = np.zeros((coarse_h, coarse_w), dtype=np.float32)
    for _ in range(int(rng.integers(5, 30))):
        cx, cy = rng.uniform(-0.1, 1.1) * coarse_w, rng.uniform(-0.1, 1.1) * coarse_h
        sx, sy = rng.uniform(0.03, 0.3) * coarse_w, rng.uniform(0.02, 0.15) * coarse_h
        field += rng.lognormal(0.0, 0.7) * np.exp(-0.5 * (((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2))
    scene = resize_bilinear(field, height, width) * rng.uniform(0.5, 2.5) * rng.choice([1.0, 1.0, -1.0])
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    angle, wavelength = rng.uniform(0, np.pi), rng.uniform(15, 80)
    ripple = np.sin(2 * np.pi * (cols * np.cos(angle) + rows * np.sin(angle)) / wavelength + rng.uniform(0, 6.3))
    return scene + ripple * rng.uniform(0.0, 0.15) + rng.uniform(0, 2) * (rows / height) ** 2


def swell(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Sea as a sum of perspective plane waves; glints are cross-shaped specks on the highest crests."""
    depth = (np.arange(height, dtype=np.float32)[:, None] + height * rng.uniform(0.1, 0.6)) / height
    far_x = (np.arange(width, dtype=np.float32)[None, :] - width / 2.0) / depth
    far_y = height * np.log(depth)
    waves = np.zeros((height, width), dtype=np.float32)
    for _ in range(int(rng.integers(6, 14))):
        wavelength, heading = rng.uniform(3.0, 40.0), rng.normal(np.pi / 2, 0.5)
        phase = (far_x * np.cos(heading) + far_y * np.sin(heading)) * (2 * np.pi / wavelength) + rng.uniform(0, 6.3)
        waves += rng.uniform(0.2, 1.0) * np.sin(phase)
    waves = normalise(waves)
    scene = waves * rng.uniform(0.2, 0.8) * depth + rng.uniform(-2, 2) * depth
    if rng.random() < 0.6:
        crest = waves > np.quantile(waves, 1.0 - rng.uniform(0.0005, 0.004))
        crest &= rng.random(crest.shape) < 0.5
        glint = crest.astype(np.float32)
        arms = np.zeros_like(glint)
        arms[1:] += glint[:-1]
        arms[:-1] += glint[1:]
        arms[:, 1:] += glint[:, :-1]
        arms[:, :-1] += glint[:, 1:]
        scene = scene + (glint + 0.4 * np.minimum(arms, 1.0)) * rng.uniform(2.0, 10.0)
    return scene


def city(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Axis-aligned city blocks with flat roofs, cool streets and lattices of small warm windows."""
    scene = np.full((height, width), rng.normal(0, 0.3), dtype=np.float32)
    block_x, block_y = rng.uniform(18, 70), rng.uniform(18, 70)
    street = rng.uniform(2, 6)
    for top in np.arange(-rng.uniform(0, block_y), height, block_y):
        for left in np.arange(-rng.uniform(0, block_x), width, block_x):
            y0, x0 = int(max(top + street, 0)), int(max(left + street, 0))
            y1, x1 = int(min(top + block_y, height)), int(min(left + block_x, width))
            if y1 <= y0 or x1 <= x0:
                continue
            scene[y0:y1, x0:x1] = rng.normal(0.8, 0.8)
            if rng.random() < 0.35:
                period = int(rng.integers(4, 8))
                lattice = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
                lattice[1::period, 1::period] = 1.0
                lattice[2::period, 1::period] = 1.0
                lattice[1::period, 2::period] = 1.0
                lattice[2::period, 2::period] = 1.0
                scene[y0:y1, x0:x1] += lattice * rng.uniform(0.2, 1.2)
    return scene + value_noise(rng, height, width, rng.uniform(30, 90), octaves=2) * rng.uniform(0.1, 0.6)


def terrain(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Cellular (Worley) patchwork with per-cell levels, ridges along cell borders and folded ridged noise."""
    scale = 2 if height * width <= 200_000 else 4
    coarse_h, coarse_w = max(height // scale, 4), max(width // scale, 4)
    points = rng.uniform(0, 1, size=(int(rng.integers(15, 90)), 2)) * [coarse_h, coarse_w]
    ys, xs = np.mgrid[0:coarse_h, 0:coarse_w].astype(np.float32)
    distances = np.sqrt((ys[..., None] - points[:, 0]) ** 2 + (xs[..., None] - points[:, 1]) ** 2)
    nearest = np.partition(distances, 1, axis=-1)[..., :2]
    cell = np.argmin(distances, axis=-1)
    levels = rng.normal(0, 1, size=len(points)).astype(np.float32)
    patch = levels[cell].repeat(scale, 0).repeat(scale, 1)
    ridges = np.exp(-(nearest[..., 1] - nearest[..., 0]) / rng.uniform(0.5, 2.0)).repeat(scale, 0).repeat(scale, 1)
    canvas = np.zeros((height, width), dtype=np.float32)
    canvas[: patch.shape[0], : patch.shape[1]] = patch[:height, :width] * rng.uniform(0.4, 1.5)
    canvas[: patch.shape[0], : patch.shape[1]] += ridges[:height, :width] * rng.uniform(0.0, 1.5)
    folded = 1.0 - np.abs(value_noise(rng, height, width, rng.uniform(10, 40), octaves=3))
    return gaussian_blur(canvas, rng.uniform(0.5, 1.5)) + folded**3 * rng.uniform(0.1, 0.8)


def flat(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Near-flat scene with a linear gradient, faint horizontal striping and a single soft bump."""
    rows = np.arange(height, dtype=np.float32)[:, None] / height
    cols = np.arange(width, dtype=np.float32)[None, :] / width
    stripes = np.cumsum(rng.normal(0, 1, size=height)).astype(np.float32)[:, None]
    stripes = (stripes - stripes.mean()) / (stripes.std() + 1e-6) * rng.uniform(0.0, 0.08)
    bump_x, bump_y, radius = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.2, 0.8)
    bump = np.exp(-((cols - bump_x) ** 2 + (rows - bump_y) ** 2) / radius**2) * rng.uniform(0.0, 0.4)
    return rng.normal(0, 0.2) * rows + rng.normal(0, 0.2) * cols + stripes + bump


def ridgeline(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Cloud bank above a ragged mountain ridge (random-walk profile), terrain or city below."""
    upper = cloudbank(rng, height, width)
    lower = (terrain if rng.random() < 0.6 else city)(rng, height, width) + rng.uniform(0.5, 3.0)
    walk = np.cumsum(rng.normal(0, rng.uniform(0.3, 2.0), size=width))
    profile = rng.uniform(0.25, 0.75) * height + walk - walk.mean()
    below = (np.arange(height, dtype=np.float32)[:, None] >= profile[None, :]).astype(np.float32)
    return upper * (1.0 - below) + lower * below


FAMILIES: dict[str, Family] = {"sky": sky, "sea": sea, "ground": ground, "horizon": horizon, "uniform": uniform}
HOLDOUT_FAMILIES: dict[str, Family] = {
    "cloudbank": cloudbank,
    "swell": swell,
    "city": city,
    "terrain": terrain,
    "flat": flat,
    "ridgeline": ridgeline,
}


def render_background(rng: np.random.Generator, family: str, height: int, width: int) -> np.ndarray:
    """Scene of the named family (default or holdout) as float32 (H, W)."""
    builder = FAMILIES.get(family) or HOLDOUT_FAMILIES.get(family)
    if builder is None:
        known = ", ".join([*FAMILIES, *HOLDOUT_FAMILIES])
        raise ValueError(f"unknown background family {family!r}; choose one of {known}")
    return builder(rng, height, width).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------- clutter objects
CLUTTER_KINDS = ("warm_blob", "edge", "corner", "building", "lights", "lit_facade")
HOLDOUT_CLUTTER_KINDS = ("warm_blob", "edge", "corner", "building")  # the holdout recipe keeps its own


def add_clutter(
    rng: np.random.Generator,
    counts: np.ndarray,
    reference: float,
    expected: float,
    kinds_allowed: tuple[str, ...] = CLUTTER_KINDS,
) -> list[str]:
    """Add distractors that must never be labelled: large warm blobs, bright edges, corners, small buildings,
    rows of lights and lit facades (grids of warm windows).

    `reference` is the contrast scale in counts; the number of objects is Poisson(expected). Returns their kinds.
    """
    height, width = counts.shape
    kinds: list[str] = []
    for _ in range(int(rng.poisson(expected))):
        kind = str(rng.choice(kinds_allowed))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        level = reference * rng.uniform(0.5, 4.0) * (1.0 if rng.random() < 0.85 else -1.0)
        angle = rng.uniform(0, np.pi)
        if kind == "warm_blob":
            radius = rng.uniform(8, 40)
            paint_shape(counts, cx, cy, radius, radius * rng.uniform(0.4, 1.0), angle, level, edge=radius * 0.6)
        elif kind == "edge":
            reach = rng.uniform(10, 80)
            end = (cx + reach * np.cos(angle), cy + reach * np.sin(angle))
            paint_segment(
                counts, (cx - reach * np.cos(angle), cy - reach * np.sin(angle)), end, rng.uniform(1, 2.5), level
            )
        elif kind == "corner":
            arm_a, arm_b, thickness = rng.uniform(8, 30), rng.uniform(8, 30), rng.uniform(1.0, 2.5)
            paint_segment(counts, (cx, cy), (cx + arm_a * np.cos(angle), cy + arm_a * np.sin(angle)), thickness, level)
            perpendicular = angle + np.pi / 2
            end = (cx + arm_b * np.cos(perpendicular), cy + arm_b * np.sin(perpendicular))
            paint_segment(counts, (cx, cy), end, thickness, level)
        elif kind == "lights":
            count, spacing = int(rng.integers(4, 16)), rng.uniform(3.0, 12.0)
            steps = np.arange(count, dtype=np.float32) * spacing
            rows = np.rint(cy + steps * np.sin(angle)).astype(np.intp)
            cols = np.rint(cx + steps * np.cos(angle)).astype(np.intp)
            inside = (rows >= 0) & (cols >= 0)
            levels = np.full(int(inside.sum()), abs(level), dtype=np.float32)
            stamp = SPECK_STAMPS[str(rng.choice(["dot", "plus", "spot"]))]
            add_specks(counts, rows[inside], cols[inside], levels, stamp)
        elif kind == "lit_facade":
            half_x, half_y = rng.uniform(8, 30), rng.uniform(8, 30)
            lattice(rng, counts, (cx, cy, half_x, half_y), angle if rng.random() < 0.3 else 0.0, abs(level))
        else:
            paint_shape(counts, cx, cy, rng.uniform(6, 18), rng.uniform(6, 18), angle, level, kind="rect")
        kinds.append(kind)
    return kinds
