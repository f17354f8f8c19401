"""Small targets: shapes, pixel-integrated rendering, SNR against local clutter, label boxes and tracks.

SNR definition (used everywhere in the project's synthetic data):

    SNR = |peak| / std(ring)

where `peak` is the amplitude the target adds at its brightest pixel (in raw counts; negative for a cold
target) and `ring` is the annulus of pixels whose centres lie between r_in and r_in + 5 px from the target
centre, with r_in = max(3, visible half-extent + 2) px, taken from the target-free frame with all sensor
noise and clutter (before dead and hot pixels). So SNR counts clutter as well as noise, the way the
infrared small-target literature reports signal-to-clutter ratios.

Shapes are rendered pixel-integrated (supersampled) around a sub-pixel centre and normalised so that the
brightest pixel is exactly 1: default recipe kinds are `gaussian` (sigma 0.4..2.5), `elliptical` (rotated
Gaussian) and `blob` (flat-topped rotated ellipse, sometimes with a hotter lobe); holdout kinds are `airy`
(Airy pattern), `box` (box-blurred square) and `disk` (defocused disk).

Label box: the visible extent (about +/-2 sigma, or the blob/disk extent), widened to at least 4 px per side
around the centre, grown to include the peak pixel, then clipped to the frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from model.synth.fields import log_uniform

MIN_BOX_SIDE = 4.0
RING_WIDTH = 5.0
DEFAULT_KINDS = ("gaussian", "elliptical", "blob")
HOLDOUT_KINDS = ("airy", "box", "disk")
_AIRY_ZERO = 3.8317


@dataclass(frozen=True)
class TargetSpec:
    """What to draw, independent of where: shape parameters, SNR and polarity."""

    kind: str
    size: float  # visible extent (diameter) in pixels
    axis_a: float  # sigma / semi-axis / first-zero radius / square side / disk radius, along the rotated x axis
    axis_b: float  # sigma / semi-axis across, box blur width, or disk edge width
    angle: float
    lobe: float  # blob only: strength of a hotter second lobe (0 = none)
    snr: float
    polarity: float  # +1 warmer than the background, -1 colder


@dataclass(frozen=True)
class Target:
    """One labelled target in a frame. Box values are pixels; (peak_x, peak_y) is its brightest pixel."""

    cx: float
    cy: float
    w: float
    h: float
    peak: float  # signed amplitude added at the peak pixel, raw counts
    snr: float
    size_class: str  # point (< 3 px), small (< 7 px) or extended
    peak_x: int
    peak_y: int
    kind: str
    extent: float  # visible size in pixels, before the minimum box side
    track_id: int = -1

    def xyxy(self) -> tuple[float, float, float, float]:
        """Label box corners (x1, y1, x2, y2) in pixels."""
        return self.cx - self.w / 2, self.cy - self.h / 2, self.cx + self.w / 2, self.cy + self.h / 2

    def yolo_line(self, width: int, height: int) -> str:
        """`0 cx cy w h`, normalised to the frame size (class 0 = target)."""
        return f"0 {self.cx / width:.6f} {self.cy / height:.6f} {self.w / width:.6f} {self.h / height:.6f}"

    def to_dict(self) -> dict:
        return asdict(self)


def size_class(extent: float) -> str:
    """Size class from the visible extent in pixels."""
    return "point" if extent < 3.0 else "small" if extent < 7.0 else "extended"


def sample_spec(
    rng: np.random.Generator,
    kind_weights: tuple[tuple[str, float], ...],
    size_range: tuple[float, float],
    snr_range: tuple[float, float],
    cold_fraction: float,
    snr_log_uniform: bool = True,
) -> TargetSpec:
    """Draw a target: kind by weight, size log-uniform, SNR log-uniform (or uniform), rarely cold."""
    names = [name for name, _ in kind_weights]
    weights = np.array([weight for _, weight in kind_weights], dtype=np.float64)
    kind = str(rng.choice(names, p=weights / weights.sum()))
    size = log_uniform(rng, *size_range)
    snr = log_uniform(rng, *snr_range) if snr_log_uniform else float(rng.uniform(*snr_range))
    angle, lobe = float(rng.uniform(0, np.pi)), 0.0
    if kind == "gaussian":
        axis_a = axis_b = float(np.clip(size / 4.0, 0.4, 2.5))
    elif kind == "elliptical":
        axis_a = float(np.clip(size / 4.0, 0.45, 2.5))
        axis_b = max(0.4, axis_a / rng.uniform(1.3, 2.5))
    elif kind == "blob":
        axis_a = max(size / 2.0, 1.0)
        axis_b = max(axis_a / rng.uniform(1.0, 2.2), 0.7)
        lobe = float(rng.uniform(0.3, 0.8)) if rng.random() < 0.35 else 0.0
    elif kind == "airy":
        axis_a = axis_b = max(size / 1.6, 0.8)
    elif kind == "box":
        axis_a = max(size * rng.uniform(0.4, 0.8), 0.8)
        axis_b = max(size - axis_a, 0.5)
        angle = 0.0 if rng.random() < 0.7 else angle
    elif kind == "disk":
        axis_b = float(rng.uniform(0.5, 1.2))
        axis_a = max(size / 2.0 - axis_b / 2.0, 0.5)
    else:
        raise ValueError(f"unknown target kind {kind!r}; choose from {DEFAULT_KINDS + HOLDOUT_KINDS}")
    polarity = -1.0 if rng.random() < cold_fraction else 1.0
    return TargetSpec(kind, size, float(axis_a), float(axis_b), angle, lobe, snr, polarity)


def half_extent(spec: TargetSpec) -> tuple[float, float]:
    """Visible half width and half height in pixels (axis-aligned, after rotation)."""
    if spec.kind in ("gaussian", "elliptical", "blob"):
        scale = 2.0 if spec.kind != "blob" else 1.0
        along, across = spec.axis_a * scale, spec.axis_b * scale
    elif spec.kind == "airy":
        along = across = 0.8 * spec.axis_a
    elif spec.kind == "box":
        along = across = (spec.axis_a + spec.axis_b) / 2.0
    else:
        along = across = spec.axis_a + spec.axis_b / 2.0
    cos, sin = abs(np.cos(spec.angle)), abs(np.sin(spec.angle))
    if spec.kind == "box":
        return along * (cos + sin), across * (cos + sin)
    return float(np.hypot(along * cos, across * sin)), float(np.hypot(along * sin, across * cos))


def _bessel_j1(values: np.ndarray, samples: int = 48) -> np.ndarray:
    """J1 by the trapezoid rule on Bessel's integral over a full period (float32-accurate for values below ~30)."""
    tau = np.linspace(-np.pi, np.pi, samples, endpoint=False, dtype=np.float32)
    return np.cos(tau - values[..., None] * np.sin(tau)).mean(axis=-1)


def _trapezoid(offset: np.ndarray, side: float, blur: float) -> np.ndarray:
    """A rectangle of width `side` convolved with one of width `blur`, normalised to a plateau of 1."""
    return np.clip(np.minimum((side + blur) / 2.0 - np.abs(offset), min(side, blur)), 0.0, None) / min(side, blur)


def profile(spec: TargetSpec, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Unnormalised intensity at offsets (dx, dy) from the target centre."""
    along = dx * np.cos(spec.angle) + dy * np.sin(spec.angle)
    across = dy * np.cos(spec.angle) - dx * np.sin(spec.angle)
    if spec.kind in ("gaussian", "elliptical"):
        return np.exp(-0.5 * ((along / spec.axis_a) ** 2 + (across / spec.axis_b) ** 2))
    if spec.kind == "blob":
        radius = np.hypot(along / spec.axis_a, across / spec.axis_b)
        body = np.exp(-np.log(2.0) * radius**4)
        if spec.lobe > 0:
            spread = 0.45 * spec.axis_b
            body = body + spec.lobe * np.exp(-0.5 * (((along - 0.5 * spec.axis_a) ** 2 + across**2) / spread**2))
        return body
    if spec.kind == "airy":
        argument = np.maximum(np.hypot(dx, dy) * (_AIRY_ZERO / spec.axis_a), 1e-4)
        return (2.0 * _bessel_j1(argument) / argument) ** 2
    if spec.kind == "box":
        return _trapezoid(along, spec.axis_a, spec.axis_b) * _trapezoid(across, spec.axis_a, spec.axis_b)
    return np.clip((spec.axis_a - np.hypot(dx, dy)) / spec.axis_b + 0.5, 0.0, 1.0)


def render(spec: TargetSpec, x: float, y: float) -> tuple[np.ndarray, int, int]:
    """Pixel-integrated patch (max |value| = 1) and its top-left pixel (left, top) for a centre at (x, y)."""
    half_x, half_y = half_extent(spec)
    radius = int(np.ceil(max(half_x, half_y) * 1.6 + 2.0))
    steps = 5 if min(spec.axis_a, spec.axis_b) < 1.0 else 3
    inside = (np.arange(steps, dtype=np.float32) + 0.5) / steps
    pixel_x, pixel_y = int(np.floor(x)), int(np.floor(y))
    offsets = (np.arange(-radius, radius + 1, dtype=np.float32)[:, None] + inside[None, :]).reshape(-1)
    dx = (offsets + np.float32(pixel_x - x))[None, :]
    dy = (offsets + np.float32(pixel_y - y))[:, None]
    side = 2 * radius + 1
    patch = profile(spec, dx, dy).reshape(side, steps, side, steps).mean(axis=(1, 3)).astype(np.float32)
    return patch / max(float(np.abs(patch).max()), 1e-12), pixel_x - radius, pixel_y - radius


def ring_std(frame: np.ndarray, x: float, y: float, inner: float, outer: float) -> float:
    """Standard deviation of the pixels whose centres are between `inner` and `outer` px from (x, y)."""
    height, width = frame.shape
    reach = int(np.ceil(outer)) + 1
    x0, x1 = max(0, int(x) - reach), min(width, int(x) + reach + 1)
    y0, y1 = max(0, int(y) - reach), min(height, int(y) + reach + 1)
    window = frame[y0:y1, x0:x1]
    distance = np.hypot(np.arange(x0, x1)[None, :] + 0.5 - x, np.arange(y0, y1)[:, None] + 0.5 - y)
    values = window[(distance >= inner) & (distance <= outer)]
    return max(float(values.std() if values.size >= 8 else window.std()), 1e-3)


def label_box(
    x: float, y: float, half_x: float, half_y: float, peak: tuple[int, int], width: int, height: int
) -> tuple[float, float, float, float]:
    """Visible extent, at least MIN_BOX_SIDE per side, grown to hold the peak pixel, clipped: (x1, y1, x2, y2)."""
    half_x, half_y = max(half_x, MIN_BOX_SIDE / 2.0), max(half_y, MIN_BOX_SIDE / 2.0)
    x1, x2 = min(x - half_x, peak[0]), max(x + half_x, peak[0] + 1.0)
    y1, y2 = min(y - half_y, peak[1]), max(y + half_y, peak[1] + 1.0)
    return max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))


def insert_target(
    signal: np.ndarray, clutter: np.ndarray, spec: TargetSpec, x: float, y: float, track_id: int = -1
) -> Target | None:
    """Add the target to `signal` in place, scaled to its SNR against `clutter` (the noisy target-free frame).

    Returns None when no part of the target, or its peak pixel, falls inside the frame.
    """
    height, width = signal.shape
    patch, left, top = render(spec, x, y)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + patch.shape[1], width), min(top + patch.shape[0], height)
    if x1 <= x0 or y1 <= y0 or not (0 <= x < width and 0 <= y < height):
        return None
    view = patch[y0 - top : y1 - top, x0 - left : x1 - left]
    brightest = int(np.argmax(np.abs(view)))
    peak_y, peak_x = divmod(brightest, view.shape[1])
    peak_x, peak_y = peak_x + x0, peak_y + y0
    half_x, half_y = half_extent(spec)
    inner = max(3.0, max(half_x, half_y) + 2.0)
    amplitude = spec.polarity * spec.snr * ring_std(clutter, x, y, inner, inner + RING_WIDTH)
    signal[y0:y1, x0:x1] += np.float32(amplitude) * view
    peak = amplitude * float(view.flat[brightest])
    bx1, by1, bx2, by2 = label_box(x, y, half_x, half_y, (peak_x, peak_y), width, height)
    extent = float(2.0 * max(half_x, half_y))
    return Target(
        cx=float(bx1 + bx2) / 2.0,
        cy=float(by1 + by2) / 2.0,
        w=float(bx2 - bx1),
        h=float(by2 - by1),
        peak=float(peak),
        snr=float(abs(peak) / abs(amplitude) * spec.snr),
        size_class=size_class(extent),
        peak_x=int(peak_x),
        peak_y=int(peak_y),
        kind=spec.kind,
        extent=extent,
        track_id=track_id,
    )


def place_targets(
    rng: np.random.Generator, signal: np.ndarray, clutter: np.ndarray, specs: list[TargetSpec], margin: float = 2.0
) -> list[Target]:
    """Place targets at random, non-overlapping positions (boxes at least 4 px apart) and insert them."""
    height, width = signal.shape
    placed: list[tuple[float, float, float, float]] = []
    targets: list[Target] = []
    for spec in specs:
        half_x, half_y = half_extent(spec)
        for _ in range(30):
            x, y = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
            clear = all(
                abs(x - ox) > half_x + ohx + 6.0 or abs(y - oy) > half_y + ohy + 6.0 for ox, oy, ohx, ohy in placed
            )
            if clear:
                target = insert_target(signal, clutter, spec, x, y)
                if target is not None:
                    placed.append((x, y, max(half_x, 2.0), max(half_y, 2.0)))
                    targets.append(target)
                break
    return targets


@dataclass
class Track:
    """A target moving at constant velocity with a small constant acceleration and a little jitter."""

    track_id: int
    spec: TargetSpec
    x: float
    y: float
    vx: float
    vy: float
    ax: float
    ay: float

    def advance(self, rng: np.random.Generator) -> None:
        self.vx += self.ax + rng.normal(0, 0.01)
        self.vy += self.ay + rng.normal(0, 0.01)
        self.x += self.vx
        self.y += self.vy

    def gone(self, width: int, height: int, margin: float = 12.0) -> bool:
        return not (-margin <= self.x <= width + margin and -margin <= self.y <= height + margin)


def spawn_track(
    rng: np.random.Generator, track_id: int, spec: TargetSpec, width: int, height: int, at_edge: bool
) -> Track:
    """A new track inside the frame, or entering from a random edge and heading inwards."""
    speed, heading = rng.uniform(0.15, 2.5), rng.uniform(0, 2 * np.pi)
    x, y = rng.uniform(4, width - 4), rng.uniform(4, height - 4)
    if at_edge:
        side = int(rng.integers(4))
        x = [-2.0, width + 2.0, x, x][side]
        y = [y, y, -2.0, height + 2.0][side]
        heading = np.arctan2(height / 2 - y, width / 2 - x) + rng.normal(0, 0.5)
    acceleration = rng.normal(0, 0.004, size=2)
    vx, vy = speed * np.cos(heading), speed * np.sin(heading)
    return Track(track_id, spec, x, y, float(vx), float(vy), float(acceleration[0]), float(acceleration[1]))
