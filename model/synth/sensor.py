"""A simple infrared focal-plane sensor: optics, gain/offset, fixed-pattern and temporal noise, defects.

The chain, applied to a scene in radiance units:

    counts   = offset + contrast * scene                     (random gain and offset, in ADC counts)
    signal   = blur(counts) * gain_map + column_offsets      (optics, vignetting and pixel response, FPN)
    noisy    = signal + z * sqrt(read_noise^2 + shot_gain * max(signal - offset, 0)) + row_offsets
    raw      = clip(round(noisy with dead and hot pixels), 0, 2^bit_depth - 1)   stored as uint16

`z` is drawn once per frame (`draw_temporal`), so the target-free frame used to measure local clutter and
the final frame with targets share the same noise realisation. Levels are given in counts of a 14-bit
sensor and scaled to the frame's bit depth (12 to 16 bits, 14-bit-ish dynamic range stored in 16 bits).

The default recipe uses Gaussian optics, column fixed-pattern noise and occasional row noise; the holdout
recipe uses defocus (box) optics, off-centre vignetting, row fixed-pattern noise with odd/even column banding,
heavier-tailed temporal noise and clustered dead pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.synth.config import SynthConfig
from model.synth.fields import box_blur, gaussian_blur, log_uniform


@dataclass
class Sensor:
    """Per-frame (or per-video) sensor state; arrays are (H,) (W,) or (H, W) float32."""

    offset: float
    contrast: float
    full_scale: int
    blur_sigma: float
    blur_kind: str
    gain_map: np.ndarray
    column_offsets: np.ndarray
    row_offsets: np.ndarray
    row_noise_std: float
    read_noise: float
    shot_gain: float
    heavy_tail: float
    defect_index: np.ndarray
    defect_values: np.ndarray

    @property
    def reference_noise(self) -> float:
        """Temporal noise standard deviation at the dark level, in counts."""
        return float(np.hypot(self.read_noise, self.row_noise_std))


@dataclass
class Temporal:
    """One frame's temporal noise draws: unit normals (H, W) and row offsets in counts (H,)."""

    normals: np.ndarray
    row_offsets: np.ndarray


def grow_clusters(rng: np.random.Generator, index: np.ndarray, width: int) -> np.ndarray:
    """Grow each defect pixel into a connected cluster of 2 to 4 pixels by a short random walk on the grid."""
    steps = np.array([1, -1, width, -width, width + 1, width - 1])
    grown, tip, alive = [index], index, np.ones(len(index), dtype=bool)
    for _ in range(3):
        tip = tip + rng.choice(steps, len(tip))
        grown.append(tip[alive])
        alive &= rng.random(len(tip)) < 0.5
    merged = np.concatenate(grown)
    return merged[merged >= 0]


def sample_sensor(rng: np.random.Generator, height: int, width: int, config: SynthConfig) -> Sensor:
    """Draw gain, offset, noise levels, fixed patterns and defects for one frame (or one video)."""
    holdout = config.recipe == "holdout"
    bit_depth = int(rng.choice(config.bit_depths))
    full_scale = 2**bit_depth - 1
    per_count = full_scale / 16383.0
    read_noise = max(log_uniform(rng, *config.noise_range) * per_count, 0.6)
    contrast = log_uniform(rng, *config.contrast_range) * per_count
    offset = rng.uniform(*config.offset_range) * full_scale

    rows = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    cols = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :] * (width / max(height, 1))
    centre = rng.normal(0, 0.35, size=2) if holdout else rng.normal(0, 0.05, size=2)
    radius_sq = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2
    falloff = rng.uniform(*config.vignetting_range) / max(float(radius_sq.max()), 1e-6)
    gain_map = (1.0 - falloff * radius_sq) * (1.0 + rng.normal(0, rng.uniform(0.0, 0.006), (height, width)))

    fpn = rng.uniform(*config.column_fpn_range) * read_noise
    column_offsets = np.zeros(width, dtype=np.float32)
    row_offsets = np.zeros(height, dtype=np.float32)
    if holdout:
        row_offsets = rng.normal(0, fpn, height).astype(np.float32)
        column_offsets[1::2] = rng.normal(0, fpn)
    else:
        column_offsets = rng.normal(0, fpn, width).astype(np.float32)
    row_noise_std = (
        rng.uniform(0, config.row_noise_max) * read_noise if rng.random() < config.row_noise_probability else 0
    )

    pixels = height * width
    hot = int(rng.poisson(rng.uniform(0, config.hot_pixel_rate) * pixels))
    dead = int(rng.poisson(rng.uniform(0, config.dead_pixel_rate) * pixels))
    hot_index = rng.integers(0, pixels, hot)
    dead_index = rng.integers(0, pixels, dead)
    if holdout and dead:
        dead_index = np.concatenate([dead_index, np.minimum(dead_index + 1, pixels - 1), dead_index + width])
        dead_index = dead_index[dead_index < pixels]
    if not holdout and rng.random() < 0.4:  # clustered defects: pairs, lines, Ls and blocks of 2 to 4 pixels
        hot_index, dead_index = grow_clusters(rng, hot_index, width), grow_clusters(rng, dead_index, width)
        hot_index, dead_index = hot_index[hot_index < pixels], dead_index[dead_index < pixels]
        hot = len(hot_index)
    hot_values = offset + (full_scale - offset) * rng.uniform(0.05, 1.0, hot) ** 2
    dead_values = offset * rng.uniform(0.0, 0.6, len(dead_index))
    return Sensor(
        offset=float(offset),
        contrast=float(contrast),
        full_scale=full_scale,
        blur_sigma=float(rng.uniform(*config.blur_range)),
        blur_kind="box" if holdout else "gaussian",
        gain_map=gain_map.astype(np.float32),
        column_offsets=column_offsets,
        row_offsets=row_offsets,
        row_noise_std=float(row_noise_std),
        read_noise=float(read_noise),
        shot_gain=float(rng.uniform(*config.shot_gain_range) * per_count),
        heavy_tail=float(rng.uniform(0.2, 0.6)) if holdout else 0.0,
        defect_index=np.concatenate([hot_index, dead_index]).astype(np.intp),
        defect_values=np.concatenate([hot_values, dead_values]).astype(np.float32),
    )


def to_counts(sensor: Sensor, scene: np.ndarray) -> np.ndarray:
    """Scene radiance to counts before the optics: offset + contrast * (scene - its mean)."""
    return (sensor.offset + sensor.contrast * (scene - np.float32(scene.mean()))).astype(np.float32)


def expose(sensor: Sensor, counts: np.ndarray) -> np.ndarray:
    """Optics (blur), vignetting with pixel response non-uniformity, and fixed-pattern offsets."""
    if sensor.blur_kind == "box":
        blurred = box_blur(counts, int(round(sensor.blur_sigma)))
        blurred = gaussian_blur(blurred, 0.5)
    else:
        blurred = gaussian_blur(counts, sensor.blur_sigma)
    return blurred * sensor.gain_map + sensor.column_offsets[None, :] + sensor.row_offsets[:, None]


def draw_temporal(rng: np.random.Generator, sensor: Sensor, height: int, width: int) -> Temporal:
    """Unit noise for one frame (Gaussian, or a Gaussian/Laplace mix in the holdout recipe) and row offsets."""
    normals = rng.standard_normal((height, width), dtype=np.float32)
    if sensor.heavy_tail > 0:
        laplace = rng.laplace(0.0, 1.0 / np.sqrt(2.0), (height, width)).astype(np.float32)
        normals = normals * np.float32(1.0 - sensor.heavy_tail) + laplace * np.float32(sensor.heavy_tail)
        normals /= np.float32(np.hypot(1.0 - sensor.heavy_tail, sensor.heavy_tail))
    rows = rng.normal(0, sensor.row_noise_std, height).astype(np.float32)
    return Temporal(normals=normals, row_offsets=rows)


def add_noise(sensor: Sensor, signal: np.ndarray, temporal: Temporal) -> np.ndarray:
    """Signal-dependent temporal noise: read noise plus a Poisson-like term growing with the signal."""
    variance = sensor.read_noise**2 + sensor.shot_gain * np.maximum(signal - sensor.offset, 0.0)
    return signal + temporal.normals * np.sqrt(variance) + temporal.row_offsets[:, None]


def digitise(sensor: Sensor, noisy: np.ndarray) -> np.ndarray:
    """Dead and hot pixels, rounding and clipping to the bit depth: the raw uint16 frame."""
    flat = noisy.reshape(-1).copy()
    flat[sensor.defect_index] = sensor.defect_values
    return np.clip(np.rint(flat), 0, sensor.full_scale).astype(np.uint16).reshape(noisy.shape)
