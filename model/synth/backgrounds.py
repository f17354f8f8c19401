"""Infrared background scenes from several noise constructions (fields.py) and painted shapes (shapes.py).

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

from model.synth.fields import gaussian_blur, normalise, resize_bilinear, smoothstep, spectral_noise, value_noise
from model.synth.shapes import blurred_shapes, lattice, paint_segment, paint_shape, speck_crowd

Family = Callable[[np.random.Generator, int, int], np.ndarray]


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
