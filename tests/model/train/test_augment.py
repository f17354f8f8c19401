"""Augmentation keeps boxes and pixels together; tiny boxes are never shrunk."""

from __future__ import annotations

import numpy as np
import pytest

from model.train.augment import (
    AugmentConfig,
    augment_canvas,
    letterbox_square,
    mosaic,
    random_flip,
    scale_bounds,
    visible_boxes,
)

SIZE = 96
QUIET = AugmentConfig(gain=0.0, offset=0.0, noise=0.0)


def _dots(rng: np.random.Generator, count: int, height: int = SIZE, width: int = SIZE, side: float = 8.0):
    """A black image with a 3x3 dot (peak 255, ring 100) at the centre of each (side x side) box.

    The peak pixel (x, y) spans [x, x + 1) and the box is centred on x + 0.5, so a crop shows the peak exactly
    when it keeps the box centre; only the dimmer ring may show beside a dropped box.
    """
    image = np.zeros((height, width, 3), np.uint8)
    pixels = rng.integers((side, side), (width - side, height - side), size=(count, 2))
    for x, y in pixels:
        image[y - 1 : y + 2, x - 1 : x + 2] = np.maximum(image[y - 1 : y + 2, x - 1 : x + 2], 100)
        image[y, x] = 255
    centres = pixels + 0.5
    boxes = np.concatenate([centres - side / 2, centres + side / 2], axis=1).astype(np.float32)
    return image, boxes, np.arange(count, dtype=np.int64) % 3


def _check_consistent(image: np.ndarray, boxes: np.ndarray, peak: int = 200, present: int = 90) -> None:
    """Every box holds a target (its ring is above `present` wherever resampling lands), and
    every pixel above `peak` lies in a box (1 px slack for interpolation)."""
    assert len(boxes) > 0
    lit = np.argwhere(image[:, :, 0] > present)  # (K, 2) rows, cols
    for x1, y1, x2, y2 in boxes:
        inside = (lit[:, 1] >= x1 - 1) & (lit[:, 1] <= x2) & (lit[:, 0] >= y1 - 1) & (lit[:, 0] <= y2)
        assert inside.any(), f"box {x1, y1, x2, y2} lost its target"
    bright = np.argwhere(image[:, :, 0] > peak)
    covered = np.zeros(len(bright), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        covered |= (bright[:, 1] >= x1 - 1) & (bright[:, 1] <= x2) & (bright[:, 0] >= y1 - 1) & (bright[:, 0] <= y2)
    assert covered.all(), "a target lies outside every box"


@pytest.mark.parametrize("seed", range(24))
def test_mosaic_scale_flip_keep_targets_in_boxes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tiles = [_dots(rng, 6) for _ in range(4)]
    sample = mosaic(tiles, SIZE, rng)
    _check_consistent(sample[0], visible_boxes(sample[1]))
    image, boxes, classes = augment_canvas(sample, QUIET, rng)
    assert image.shape == (SIZE, SIZE, 3) and len(boxes) == len(classes)
    assert (boxes >= 0).all() and (boxes <= SIZE).all()
    _check_consistent(image, boxes)


@pytest.mark.parametrize("seed", range(6))
def test_letterboxed_rectangular_frame_with_intensity_jitter(seed: int) -> None:
    rng = np.random.default_rng(seed)
    image, boxes, classes = _dots(rng, 5, height=60, width=SIZE)
    sample = letterbox_square(image, boxes, classes, SIZE)
    out, out_boxes, out_classes = augment_canvas(sample, AugmentConfig(noise=2.0, noise_probability=1.0), rng)
    assert out.dtype == np.uint8 and len(out_boxes) == len(out_classes)
    _check_consistent(out, out_boxes, peak=180, present=60)


def test_flip_mirrors_boxes() -> None:
    rng = np.random.default_rng(0)
    image, boxes, classes = _dots(rng, 3)
    config = AugmentConfig(flip_horizontal=1.0, flip_vertical=1.0)
    flipped, tracked, _ = random_flip((image, boxes, classes), config, rng)
    flipped_boxes = visible_boxes(tracked)
    np.testing.assert_allclose(flipped_boxes[:, 0], SIZE - boxes[:, 2])
    np.testing.assert_allclose(flipped_boxes[:, 3], SIZE - boxes[:, 1])
    _check_consistent(flipped, flipped_boxes)


def test_tiny_boxes_are_never_shrunk() -> None:
    four_px = np.array([[10, 10, 14, 14], [30, 30, 50, 50]], np.float32)
    assert scale_bounds(four_px, AugmentConfig()) == (1.0, 1.25)
    eight_px = np.array([[10, 10, 18, 18]], np.float32)
    assert scale_bounds(eight_px, AugmentConfig()) == (0.75, 1.25)
    assert scale_bounds(np.zeros((0, 4), np.float32), AugmentConfig()) == (0.75, 1.25)


def test_one_pixel_target_survives_augmentation() -> None:
    for seed in range(10):
        rng = np.random.default_rng(seed)
        image = np.zeros((SIZE, SIZE, 3), np.uint8)
        image[50, 40] = 255
        boxes = np.array([[38.5, 48.5, 42.5, 52.5]], np.float32)  # the 4 px label floor around a 1 px target
        out, out_boxes, _ = augment_canvas((image, boxes, np.zeros(1, np.int64)), QUIET, rng)
        if len(out_boxes):
            x1, y1, x2, y2 = out_boxes[0].round().astype(int)
            assert out[y1:y2, x1:x2, 0].max() >= 120


def test_frames_without_targets() -> None:
    rng = np.random.default_rng(0)
    empty = (np.zeros((SIZE, SIZE, 3), np.uint8), np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    image, boxes, classes = augment_canvas(mosaic([empty] * 4, SIZE, rng), AugmentConfig(), rng)
    assert image.shape == (SIZE, SIZE, 3) and boxes.shape == (0, 4) and classes.shape == (0,)
