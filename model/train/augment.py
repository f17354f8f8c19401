"""Training augmentation for infrared small targets, on uint8 (H, W, 3) images and xyxy pixel boxes.

Small targets are a few pixels of contrast, so augmentation here changes geometry and intensity gently:

- Mosaic: four images share one square canvas around a random centre, each at its own scale (no shrinking
  to half size as in the usual 2x mosaic), so a target keeps its pixels.
- Scale jitter: the whole canvas is resized by a factor in [scale_min, scale_max] (default 0.75..1.25), then
  randomly cropped or padded back. The lower bound is raised so the smallest labelled box stays at least
  `min_box_size` pixels: an image whose smallest box is already at the label floor (4 px, possibly a 1-px
  target) is only ever enlarged, never shrunk into nothing.
- Horizontal and vertical flips (infrared scenes have no preferred up or left).
- Intensity: a gain and offset jitter and, with some probability, additive Gaussian noise, the same for all
  channels so grey frames stay grey. No blur: it would erase the targets.

A box survives a crop only while its centre stays inside the visible region, and is clipped to it. Through
the pipeline each box is tracked twice, (N, 8): the visible (clipped) box, then the full box, so the centre
test always uses the target's real centre, even after an earlier crop clipped its box; `visible_boxes` gives
the final labels. The class array follows the boxes everywhere. Resizing uses the same bilinear
interpolation as inference (model.ops.letterbox), so training and inference see targets alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

PAD_VALUE = 114

Sample = tuple[np.ndarray, np.ndarray, np.ndarray]  # image (H, W, 3) uint8, boxes (N, 4 or 8) xyxy px, classes (N,)


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths; probabilities in 0..1, intensity in grey levels of 0..255."""

    mosaic: float = 0.5
    flip_horizontal: float = 0.5
    flip_vertical: float = 0.5
    scale_min: float = 0.75
    scale_max: float = 1.25
    min_box_size: float = 4.0
    gain: float = 0.2
    offset: float = 15.0
    noise: float = 4.0
    noise_probability: float = 0.5


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a (H, W, 3) uint8 image (torch interpolation, as at inference)."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
    resized = F.interpolate(pixels, size=(height, width), mode="bilinear", align_corners=False)
    return resized[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def fit_long_side(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Resize so the longer side is `size`, keeping the aspect ratio; boxes scale along. Returns the scale too."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
    return resize_image(image, new_height, new_width), boxes * scale, scale


def tracked_boxes(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) label boxes to (N, 8) visible + full boxes (already tracked boxes pass through)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.ndim == 2 and boxes.shape[1] == 8:
        return boxes
    boxes = boxes.reshape(-1, 4)
    return np.concatenate([boxes, boxes], axis=1)


def visible_boxes(boxes: np.ndarray) -> np.ndarray:
    """The visible (clipped) part of tracked boxes: the final labels, (N, 4)."""
    return tracked_boxes(boxes)[:, :4].copy()


def keep_visible(
    boxes: np.ndarray, classes: np.ndarray, region: tuple[float, float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Keep boxes whose full box has its centre inside region (x1, y1, x2, y2); clip their visible box to it."""
    boxes = tracked_boxes(boxes)
    if len(boxes) == 0:
        return boxes.reshape(0, 8), classes.reshape(0)
    x1, y1, x2, y2 = region
    centres = (boxes[:, 4:6] + boxes[:, 6:8]) / 2
    inside = (centres[:, 0] >= x1) & (centres[:, 0] < x2) & (centres[:, 1] >= y1) & (centres[:, 1] < y2)
    kept = boxes[inside].copy()
    kept[:, [0, 2]] = kept[:, [0, 2]].clip(x1, x2)
    kept[:, [1, 3]] = kept[:, [1, 3]].clip(y1, y2)
    return kept, classes[inside]


def place(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, size: int, offset_x: int, offset_y: int) -> Sample:
    """Paste `image` on a size x size grey canvas with its top-left at (offset_x, offset_y) (may be negative)."""
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    height, width = image.shape[:2]
    x1, y1 = max(offset_x, 0), max(offset_y, 0)
    x2, y2 = min(offset_x + width, size), min(offset_y + height, size)
    if x2 > x1 and y2 > y1:
        canvas[y1:y2, x1:x2] = image[y1 - offset_y : y2 - offset_y, x1 - offset_x : x2 - offset_x]
    shifted = tracked_boxes(boxes) + np.array([offset_x, offset_y] * 4, dtype=np.float32)
    kept, kept_classes = keep_visible(shifted, classes, (x1, y1, x2, y2))
    return canvas, kept, kept_classes


def letterbox_square(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, size: int) -> Sample:
    """Centre an image whose longer side is at most `size` on a square grey canvas."""
    height, width = image.shape[:2]
    return place(image, boxes, classes, size, (size - width) // 2, (size - height) // 2)


def mosaic(tiles: Sequence[Sample], size: int, rng: np.random.Generator) -> Sample:
    """Four images around a random centre of a size x size canvas, each keeping its own scale.

    Tile k fills one quadrant (top-left, top-right, bottom-left, bottom-right) with its corner at the centre.
    """
    if len(tiles) != 4:
        raise ValueError(f"mosaic needs 4 images, got {len(tiles)}")
    centre_x = int(rng.uniform(0.25, 0.75) * size)
    centre_y = int(rng.uniform(0.25, 0.75) * size)
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    all_boxes, all_classes = [], []
    for quadrant, (image, boxes, classes) in enumerate(tiles):
        height, width = image.shape[:2]
        right, bottom = quadrant % 2 == 1, quadrant >= 2
        offset_x = centre_x if right else centre_x - width
        offset_y = centre_y if bottom else centre_y - height
        region_x = (centre_x, size) if right else (0, centre_x)
        region_y = (centre_y, size) if bottom else (0, centre_y)
        x1, x2 = max(region_x[0], offset_x), min(region_x[1], offset_x + width)
        y1, y2 = max(region_y[0], offset_y), min(region_y[1], offset_y + height)
        if x2 <= x1 or y2 <= y1:
            continue
        canvas[y1:y2, x1:x2] = image[y1 - offset_y : y2 - offset_y, x1 - offset_x : x2 - offset_x]
        shifted = tracked_boxes(boxes) + np.array([offset_x, offset_y] * 4, dtype=np.float32)
        kept, kept_classes = keep_visible(shifted, classes, (x1, y1, x2, y2))
        all_boxes.append(kept)
        all_classes.append(kept_classes)
    boxes = np.concatenate(all_boxes) if all_boxes else np.zeros((0, 8), dtype=np.float32)
    classes = np.concatenate(all_classes) if all_classes else np.zeros(0, dtype=np.int64)
    return canvas, boxes.astype(np.float32), classes.astype(np.int64)


def scale_bounds(boxes: np.ndarray, config: AugmentConfig) -> tuple[float, float]:
    """The scale range for these boxes: the lower bound keeps the smallest box at least min_box_size pixels."""
    low, high = config.scale_min, config.scale_max
    if len(boxes):
        full = tracked_boxes(boxes)[:, 4:]
        sides = np.minimum(full[:, 2] - full[:, 0], full[:, 3] - full[:, 1])
        smallest = float(sides.min())
        if smallest > 0:
            low = max(low, config.min_box_size / smallest)
    return min(low, high), high


def random_scale(sample: Sample, config: AugmentConfig, rng: np.random.Generator) -> Sample:
    """Resize a square canvas by a random factor (see scale_bounds), then crop or pad it back at a random place."""
    image, boxes, classes = sample
    size = image.shape[0]
    low, high = scale_bounds(boxes, config)
    factor = float(rng.uniform(low, high))
    scaled_size = max(1, round(size * factor))
    if scaled_size == size:
        return sample
    scaled = resize_image(image, scaled_size, scaled_size)
    factor = scaled_size / size
    shift = rng.integers(min(0, size - scaled_size), max(0, size - scaled_size) + 1)
    shift_y = rng.integers(min(0, size - scaled_size), max(0, size - scaled_size) + 1)
    return place(scaled, tracked_boxes(boxes) * factor, classes, size, int(shift), int(shift_y))


def random_flip(sample: Sample, config: AugmentConfig, rng: np.random.Generator) -> Sample:
    """Flip left-right and/or up-down with the configured probabilities."""
    image, boxes, classes = sample
    height, width = image.shape[:2]
    boxes = tracked_boxes(boxes).copy()
    if rng.random() < config.flip_horizontal:
        image = image[:, ::-1]
        boxes[:, [0, 2, 4, 6]] = width - boxes[:, [2, 0, 6, 4]]
    if rng.random() < config.flip_vertical:
        image = image[::-1]
        boxes[:, [1, 3, 5, 7]] = height - boxes[:, [3, 1, 7, 5]]
    return np.ascontiguousarray(image), boxes, classes


def jitter_intensity(image: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Random gain and offset, then Gaussian noise with some probability; the same for every channel."""
    gain = rng.uniform(1.0 - config.gain, 1.0 + config.gain)
    offset = rng.uniform(-config.offset, config.offset)
    values = image.astype(np.float32) * gain + offset
    if config.noise > 0 and rng.random() < config.noise_probability:
        sigma = rng.uniform(0.0, config.noise)
        values += rng.normal(0.0, sigma, size=image.shape[:2]).astype(np.float32)[:, :, None]
    return np.clip(values + 0.5, 0, 255).astype(np.uint8)


def augment_canvas(sample: Sample, config: AugmentConfig, rng: np.random.Generator) -> Sample:
    """Scale jitter, flips and intensity jitter on a square canvas (after letterboxing or mosaic); returns the
    final (visible, (N, 4)) boxes."""
    image, boxes, classes = random_flip(random_scale(sample, config, rng), config, rng)
    return jitter_intensity(image, config, rng), visible_boxes(boxes), classes
