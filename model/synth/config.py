"""What shapes the synthetic data: `SynthConfig` (the default training recipe) and `holdout_config()`.

Noise levels are counts of a 14-bit sensor (see sensor.py); background families are in backgrounds.py, target
kinds in targets.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.synth.backgrounds import FAMILIES, HOLDOUT_FAMILIES
from model.synth.targets import DEFAULT_KINDS, HOLDOUT_KINDS

RECIPE_CODES = {"default": 0, "holdout": 1}  # part of each frame's seed (dataset.frame_rng)


@dataclass(frozen=True)
class SynthConfig:
    """Everything that shapes the generated data. Noise levels are counts of a 14-bit sensor."""

    width: int = 320
    height: int = 256
    min_targets: int = 0
    max_targets: int = 6
    empty_fraction: float = 0.08  # share of frames with no target (when min_targets is 0)
    size_range: tuple[float, float] = (1.0, 12.0)  # visible target extent in pixels, log-uniform
    snr_range: tuple[float, float] = (2.0, 15.0)  # peak / local ring std (see targets.py)
    snr_log_uniform: bool = True
    cold_fraction: float = 0.06
    background_weights: tuple[tuple[str, float], ...] = (
        ("sky", 0.24),
        ("sea", 0.2),
        ("ground", 0.24),
        ("horizon", 0.2),
        ("uniform", 0.12),
    )
    target_weights: tuple[tuple[str, float], ...] = (("gaussian", 0.45), ("elliptical", 0.3), ("blob", 0.25))
    clutter_rate: float = 2.0  # expected clutter objects (blobs, edges, corners, buildings) per 320x256 area
    bit_depths: tuple[int, ...] = (12, 14, 14, 14, 16)
    offset_range: tuple[float, float] = (0.05, 0.45)  # dark level as a fraction of full scale
    contrast_range: tuple[float, float] = (40.0, 1200.0)  # counts per scene unit, log-uniform
    noise_range: tuple[float, float] = (3.0, 40.0)  # read noise std, log-uniform
    shot_gain_range: tuple[float, float] = (0.0, 0.06)  # extra variance per count above the dark level
    column_fpn_range: tuple[float, float] = (0.0, 1.0)  # fixed-pattern std, times the read noise
    row_noise_probability: float = 0.3
    row_noise_max: float = 0.6  # temporal row noise std, times the read noise
    blur_range: tuple[float, float] = (0.3, 1.1)  # optics sigma (box radius in the holdout recipe)
    vignetting_range: tuple[float, float] = (0.0, 0.12)  # relative fall-off at the corners
    hot_pixel_rate: float = 4e-5
    dead_pixel_rate: float = 1e-4
    recipe: str = "default"  # "default" or "holdout" (other backgrounds, shapes, optics and noise)

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16:
            raise ValueError(f"frame size {self.width}x{self.height} is too small; use at least 16x16")
        if not 0 <= self.min_targets <= self.max_targets:
            raise ValueError(f"need 0 <= min_targets <= max_targets, got {self.min_targets}, {self.max_targets}")
        if self.recipe not in RECIPE_CODES:
            raise ValueError(f"unknown recipe {self.recipe!r}; choose one of {sorted(RECIPE_CODES)}")
        for name, _ in self.background_weights:
            if name not in FAMILIES and name not in HOLDOUT_FAMILIES:
                raise ValueError(f"unknown background family {name!r}")
        for name, _ in self.target_weights:
            if name not in DEFAULT_KINDS + HOLDOUT_KINDS:
                raise ValueError(f"unknown target kind {name!r}")
        if not (0 < self.size_range[0] <= self.size_range[1] and 0 < self.snr_range[0] <= self.snr_range[1]):
            raise ValueError("size_range and snr_range must be positive (low, high) pairs")


def holdout_config(width: int = 640, height: int = 512) -> SynthConfig:
    """The holdout recipe: other backgrounds, PSFs (Airy, box-blurred squares, disks), optics and noise mix."""
    return SynthConfig(
        width=width,
        height=height,
        min_targets=1,
        max_targets=4,
        size_range=(1.5, 9.0),
        snr_range=(4.0, 12.0),
        snr_log_uniform=False,
        cold_fraction=0.03,
        background_weights=tuple((name, 1.0) for name in HOLDOUT_FAMILIES),
        target_weights=(("airy", 0.4), ("box", 0.35), ("disk", 0.25)),
        clutter_rate=1.5,
        bit_depths=(12, 14, 16, 16),
        contrast_range=(60.0, 900.0),
        noise_range=(4.0, 30.0),
        shot_gain_range=(0.0, 0.03),
        column_fpn_range=(0.0, 0.8),
        row_noise_probability=0.15,
        blur_range=(0.5, 1.6),
        vignetting_range=(0.02, 0.2),
        recipe="holdout",
    )
