"""Noise fields and filters for synthetic scenes: float32 (H, W) arrays, drawn from a numpy Generator.

1/f^beta spectral noise and lattice value noise (both normalised to zero mean and unit std), a bilinear resize,
and box and Gaussian blurs (reflect padding), used by the background families and the sensor's optics; and
`log_uniform`, the scalar draw the sensor and target samplers share.
"""

from __future__ import annotations

import numpy as np


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """A draw whose logarithm is uniform between log(low) and log(high)."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


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
