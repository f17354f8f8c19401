"""Plain-torch detection operations: anchors, DFL decoding, box helpers, class-aware NMS and letterboxing.

Everything here is a function of tensors and thresholds, with no model state, so the worker, evaluation and
the tests share one definition of each step:

    raw head maps --decode_levels--> (B, 4 + nc, A) centre/size boxes in input pixels and sigmoid scores
                  --non_max_suppression--> per image (N, 6): x1, y1, x2, y2, score, class
                  --scale_boxes--> boxes in the original frame's pixels

Letterboxing keeps the aspect ratio: each frame is resized by a fixed factor (`pixel_scale`, the pixel scale the
network was trained at) or so that its longer side becomes `imgsz`, each side is padded up to a multiple of the
network stride (centred, grey 114), and a batch of mixed sizes is padded bottom/right to the largest height and
width; every frame keeps its own factor. No torchvision: NMS is written in torch so CPU and CUDA builds behave the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

PAD_VALUE = 114.0 / 255.0
NMS_BLOCK_SIZE = 1024


def make_anchors(
    sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    offset: float = 0.5,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Anchor points (A, 2) as (x, y) in grid units plus `offset`, and the stride of each anchor (A, 1).

    `sizes` holds (height, width) per level; anchors run level by level, row-major inside a level, which is
    the order of `torch.cat([level.flatten(2) for level in levels], 2)`.
    """
    if len(sizes) != len(strides):
        raise ValueError(f"got {len(sizes)} level sizes but {len(strides)} strides")
    dtype = dtype or torch.float32
    points, stride_columns = [], []
    for (height, width), stride in zip(sizes, strides, strict=True):
        ys = torch.arange(height, device=device, dtype=dtype) + offset
        xs = torch.arange(width, device=device, dtype=dtype) + offset
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x, grid_y), dim=-1).reshape(-1, 2))
        stride_columns.append(torch.full((height * width, 1), float(stride), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(stride_columns)


def dfl_distances(box_logits: Tensor, reg_max: int = 16) -> Tensor:
    """Distribution focal loss decoding: (B, 4 * reg_max, A) logits to (B, 4, A) expected distances in bins.

    Each side (left, top, right, bottom) has `reg_max` bins; the distance is the softmax-weighted mean bin index.
    """
    batch, channels, anchors = box_logits.shape
    if channels != 4 * reg_max:
        raise ValueError(f"expected {4 * reg_max} box channels for reg_max={reg_max}, got {channels}")
    probabilities = box_logits.view(batch, 4, reg_max, anchors).softmax(dim=2)
    bins = torch.arange(reg_max, device=box_logits.device, dtype=probabilities.dtype)
    return torch.einsum("bsra,r->bsa", probabilities, bins)


def decode_levels(levels: Sequence[Tensor], strides: Sequence[int], reg_max: int = 16) -> Tensor:
    """Raw head maps, each (B, 4 * reg_max + nc, H, W), to (B, 4 + nc, A): cx, cy, w, h in pixels, class scores."""
    sizes = [(level.shape[2], level.shape[3]) for level in levels]
    flat = torch.cat([level.flatten(2) for level in levels], dim=2)  # (B, 4*reg_max + nc, A)
    box_logits, class_logits = flat.split((4 * reg_max, flat.shape[1] - 4 * reg_max), dim=1)
    anchor_points, anchor_strides = make_anchors(sizes, strides, device=flat.device, dtype=flat.dtype)
    distances = dfl_distances(box_logits, reg_max)  # (B, 4, A), in stride units
    points = anchor_points.transpose(0, 1)  # (2, A)
    top_left = points - distances[:, :2]
    bottom_right = points + distances[:, 2:]
    centre = (top_left + bottom_right) / 2
    size = bottom_right - top_left
    boxes = torch.cat((centre, size), dim=1) * anchor_strides.transpose(0, 1)  # (B, 4, A)
    return torch.cat((boxes, class_logits.sigmoid()), dim=1)


TTA_VIEWS: dict[str, tuple[tuple[int, ...], ...]] = {
    "off": ((),),
    "mirror": ((), (3,)),
    "flips": ((), (3,), (2,), (2, 3)),
}
"""Test-time augmentation modes: the dims of a (B, C, H, W) batch each view flips (3: left-right, 2: up-down)."""


def tta_mode(value: str | bool | None) -> str:
    """A `TTA_VIEWS` key from a mode name or a switch: True means "mirror", False or None "off"."""
    if value is None or isinstance(value, bool):
        return "mirror" if value else "off"
    if value not in TTA_VIEWS:
        raise ValueError(f"unknown test-time augmentation {value!r}; use one of: {', '.join(TTA_VIEWS)}")
    return value


def tta_batch(batch: Tensor, views: Sequence[tuple[int, ...]]) -> Tensor:
    """(B, C, H, W) to (V*B, C, H, W): the batch once per view, flipped along its dims, in the same memory format."""
    if len(views) == 1 and not views[0]:
        return batch
    memory_format = torch.channels_last if batch.is_contiguous(memory_format=torch.channels_last) else None
    stacked = torch.cat([batch.flip(dims) if dims else batch for dims in views])
    return stacked.contiguous(memory_format=memory_format) if memory_format is not None else stacked


def merge_tta(levels: Sequence[Tensor], views: Sequence[tuple[int, ...]], reg_max: int = 16) -> list[Tensor]:
    """Raw head maps of a `tta_batch` (V*B images) to B maps: the mean over the views of each place's prediction.

    Each view's maps are flipped back along its dims and its distance bins swapped to match (left and right for
    a left-right flip, top and bottom for an up-down one), so every anchor averages the predictions of the same
    place. Anchors sit at the centres of a grid that spans the whole (stride-padded) input, so a flip maps the
    grid onto itself exactly.
    """
    if len(views) == 1 and not views[0]:
        return list(levels)
    return [
        sum(_unflip(v, d, reg_max) for v, d in zip(level.chunk(len(views)), views, strict=True)) / len(views)
        for level in levels
    ]


def _unflip(maps: Tensor, dims: tuple[int, ...], reg_max: int) -> Tensor:
    """One view's raw head maps flipped back along `dims`, with the distance bins of the flipped sides swapped."""
    if not dims:
        return maps
    left, top, right, bottom, classes = maps.flip(dims).split((reg_max,) * 4 + (maps.shape[1] - 4 * reg_max,), 1)
    if 3 in dims:
        left, right = right, left
    if 2 in dims:
        top, bottom = bottom, top
    return torch.cat((left, top, right, bottom, classes), dim=1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) centre x, centre y, width, height to (..., 4) x1, y1, x2, y2."""
    centre, size = boxes[..., :2], boxes[..., 2:4]
    return torch.cat((centre - size / 2, centre + size / 2), dim=-1)


def box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes: (N, M). Degenerate boxes give 0, never NaN."""
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]).clamp(min=0) * (boxes_a[:, 3] - boxes_a[:, 1]).clamp(min=0)
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]).clamp(min=0) * (boxes_b[:, 3] - boxes_b[:, 1]).clamp(min=0)
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    union = area_a[:, None] + area_b[None, :] - intersection
    return intersection / union.clamp(min=torch.finfo(union.dtype).tiny)


def _greedy_within(overlaps: Tensor) -> Tensor:
    """Exact greedy NMS on an (n, n) boolean 'row suppresses column' matrix of score-sorted boxes.

    Box j survives iff no surviving box i < j overlaps it. Starting from 'all survive', each pass fixes at
    least the next box in order, so the loop ends within n passes; in practice it takes a handful.
    """
    overlaps = overlaps.triu(diagonal=1)
    keep = torch.ones(overlaps.shape[0], dtype=torch.bool, device=overlaps.device)
    for _ in range(overlaps.shape[0] + 1):
        updated = ~(overlaps & keep[:, None]).any(dim=0)
        if torch.equal(updated, keep):
            break
        keep = updated
    return keep


def nms_indices(boxes: Tensor, scores: Tensor, iou_threshold: float, max_keep: int | None = None) -> Tensor:
    """Greedy NMS over (N, 4) xyxy boxes: indices of the kept boxes, highest score first.

    A box is dropped when its IoU with a kept, higher-scoring box is above `iou_threshold`. Work runs in
    blocks of NMS_BLOCK_SIZE boxes so memory stays O(N * block) and it stops once `max_keep` boxes are kept.
    """
    order = scores.argsort(descending=True, stable=True)
    sorted_boxes = boxes[order]
    kept: list[Tensor] = []
    kept_count = 0
    for start in range(0, order.numel(), NMS_BLOCK_SIZE):
        block = torch.arange(start, min(start + NMS_BLOCK_SIZE, order.numel()), device=boxes.device)
        if kept:
            previous = torch.cat(kept)
            suppressed = (box_iou(sorted_boxes[block], sorted_boxes[previous]) > iou_threshold).any(dim=1)
            block = block[~suppressed]
        if block.numel() == 0:
            continue
        block_boxes = sorted_boxes[block]
        block = block[_greedy_within(box_iou(block_boxes, block_boxes) > iou_threshold)]
        kept.append(block)
        kept_count += block.numel()
        if max_keep is not None and kept_count >= max_keep:
            break
    if not kept:
        return order[:0]
    survivors = torch.cat(kept)
    if max_keep is not None:
        survivors = survivors[:max_keep]
    return order[survivors]


def _per_image(value: float | int | Sequence, batch: int, name: str) -> list:
    if isinstance(value, (int, float)):
        return [value] * batch
    values = list(value)
    if len(values) != batch:
        raise ValueError(f"{name} has {len(values)} values for a batch of {batch}")
    return values


def select_detections(
    decoded: Tensor,
    conf: float | Sequence[float] = 0.25,
    iou: float | Sequence[float] = 0.45,
    max_det: int | Sequence[int] = 300,
    max_candidates: int = 30000,
) -> list[tuple[Tensor, Tensor]]:
    """Per image, the (anchor index, class) pairs that survive NMS, best first. See non_max_suppression."""
    batch = decoded.shape[0]
    confs = _per_image(conf, batch, "conf")
    ious = _per_image(iou, batch, "iou")
    max_dets = _per_image(max_det, batch, "max_det")
    class_scores = decoded[:, 4:]  # (B, nc, A)
    best_scores, best_classes = class_scores.max(dim=1)  # (B, A): one class per anchor, the argmax
    results = []
    for image in range(batch):
        candidates = (best_scores[image] > confs[image]).nonzero().squeeze(1)
        if candidates.numel() > max_candidates:
            top = best_scores[image, candidates].topk(max_candidates).indices
            candidates = candidates[top]
        boxes = xywh_to_xyxy(decoded[image, :4, candidates].transpose(0, 1))
        classes = best_classes[image, candidates]
        if candidates.numel():
            # Class-offset trick: shift each class into its own region so one NMS never mixes classes.
            span = (boxes.max() - boxes.min()).item() + 1.0
            shifted = boxes - boxes.min() + classes[:, None].to(boxes.dtype) * span
            kept = nms_indices(shifted, best_scores[image, candidates], float(ious[image]), int(max_dets[image]))
        else:
            kept = candidates
        results.append((candidates[kept], classes[kept]))
    return results


def non_max_suppression(
    decoded: Tensor,
    conf: float | Sequence[float] = 0.25,
    iou: float | Sequence[float] = 0.45,
    max_det: int | Sequence[int] = 300,
    max_candidates: int = 30000,
) -> list[Tensor]:
    """Class-aware NMS on decoded (B, 4 + nc, A) predictions: per image an (N, 6) tensor x1, y1, x2, y2, score, class.

    Each anchor votes for one class only, its highest-scoring one (argmax), and is a candidate when that score
    is above `conf`. At most `max_candidates` candidates (the best) enter NMS, which drops a box overlapping a
    higher-scoring box of the same class by IoU above `iou`; at most `max_det` boxes are kept, best first.
    `conf`, `iou` and `max_det` accept one value for the batch or one per image.
    """
    rows = []
    for image, (anchors, classes) in enumerate(select_detections(decoded, conf, iou, max_det, max_candidates)):
        boxes = xywh_to_xyxy(decoded[image, :4, anchors].transpose(0, 1))
        scores = decoded[image, 4:, anchors].gather(0, classes[None]).squeeze(0)
        rows.append(torch.cat((boxes, scores[:, None], classes[:, None].to(boxes.dtype)), dim=1))
    return rows


@dataclass(frozen=True)
class LetterboxParams:
    """How one frame was placed in the network input: input = original * scale, shifted by (pad_x, pad_y)."""

    scale: float
    pad_x: int
    pad_y: int
    width: int
    height: int

    @property
    def resized_width(self) -> int:
        return max(1, round(self.width * self.scale))

    @property
    def resized_height(self) -> int:
        return max(1, round(self.height * self.scale))


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def letterbox_size(
    height: int, width: int, imgsz: int | None = None, pixel_scale: float | None = None
) -> tuple[float, int, int]:
    """(scale, resized height, resized width) of a frame: by `pixel_scale` when given, else longer side `imgsz`."""
    scale = pixel_scale if pixel_scale is not None else imgsz / max(height, width)
    return scale, max(1, round(height * scale)), max(1, round(width * scale))


def padded_shape(
    height: int, width: int, imgsz: int | None = None, stride: int = 32, pixel_scale: float | None = None
) -> tuple[int, int]:
    """The (height, width) of a frame's network input: resized, then padded up to multiples of `stride`."""
    _, resized_height, resized_width = letterbox_size(height, width, imgsz, pixel_scale)
    return _round_up(resized_height, stride), _round_up(resized_width, stride)


def letterbox(
    images: list[Tensor], imgsz: int | None = None, stride: int = 32, pixel_scale: float | None = None
) -> tuple[Tensor, list[LetterboxParams]]:
    """Resize (3, H, W) uint8 frames on their device, pad to stride multiples, stack into a batch.

    Each frame is resized by `pixel_scale` when given, else so that its longer side is `imgsz` (one of the two).
    Returns a (B, 3, H', W') float batch in 0..1 and per-frame LetterboxParams. A frame is padded evenly on
    both sides of each axis up to a multiple of `stride` (`padded_shape`); the batch is then padded bottom/right to
    its largest height and width. Frames of different padded shapes would then see each other's padding: the
    worker only batches frames of one padded shape (worker/schedule.py), so a frame's answer is its own.
    """
    if not images:
        raise ValueError("letterbox needs at least one image")
    if (imgsz is None) == (pixel_scale is None):
        raise ValueError("letterbox needs either imgsz or pixel_scale")
    placed: list[tuple[Tensor, LetterboxParams]] = []
    for image in images:
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
        height, width = int(image.shape[1]), int(image.shape[2])
        scale, resized_height, resized_width = letterbox_size(height, width, imgsz, pixel_scale)
        pixels = image.float().div_(255.0)[None]  # (1, 3, H, W)
        if (resized_height, resized_width) != (height, width):
            pixels = F.interpolate(pixels, size=(resized_height, resized_width), mode="bilinear", align_corners=False)
        pad_y = (_round_up(resized_height, stride) - resized_height) // 2
        pad_x = (_round_up(resized_width, stride) - resized_width) // 2
        placed.append((pixels.clamp_(0.0, 1.0), LetterboxParams(scale, pad_x, pad_y, width, height)))
    batch_height = max(_round_up(pixels.shape[2], stride) for pixels, _ in placed)
    batch_width = max(_round_up(pixels.shape[3], stride) for pixels, _ in placed)
    batch = images[0].new_full((len(images), 3, batch_height, batch_width), PAD_VALUE, dtype=torch.float32)
    for index, (pixels, params) in enumerate(placed):
        rows, cols = pixels.shape[2], pixels.shape[3]
        batch[index, :, params.pad_y : params.pad_y + rows, params.pad_x : params.pad_x + cols] = pixels[0]
    return batch, [params for _, params in placed]


def scale_boxes(boxes_xyxy: Tensor, params: LetterboxParams) -> Tensor:
    """Map (N, 4) xyxy boxes from letterboxed input pixels back to the original frame, clipped to its bounds."""
    boxes = boxes_xyxy.clone()
    boxes[:, [0, 2]] = ((boxes[:, [0, 2]] - params.pad_x) / params.scale).clamp(0, params.width)
    boxes[:, [1, 3]] = ((boxes[:, [1, 3]] - params.pad_y) / params.scale).clamp(0, params.height)
    return boxes
