"""The detection loss of current anchor-free YOLO detectors, on MASENet's raw head maps.

    loss = 7.5 * box + 0.5 * cls + 1.5 * dfl          (per image; the returned total is times the batch size)

- cls: binary cross-entropy of every anchor's class logits against the soft targets of the task-aligned
  assigner (model.train.assigner), summed and divided by the sum of the target scores (at least 1).
- box: 1 - CIoU between predicted and assigned boxes, in stride units, for positive anchors.
- dfl: distribution focal loss: each side's distance target t (in stride units) is shared by the two bins
  around it, cross-entropy weighted (ceil(t) - t, t - floor(t)).

Box and DFL terms are weighted by each positive's target score and divided by the sum of those weights, a
weighted mean. With targets of a few pixels, early predicted boxes overlap them very little, target scores
start near zero, and dividing by max(sum, 1) as for large objects would mute the box terms until the boxes
happen to shrink; once the sum is above 1 the two conventions agree. A batch without targets gives zero
box and DFL terms and a pure background classification term.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from model.ops import dfl_distances, make_anchors
from model.train.assigner import TaskAlignedAssigner


@dataclass(frozen=True)
class LossGains:
    box: float = 7.5
    cls: float = 0.5
    dfl: float = 1.5


def complete_iou(boxes_a: Tensor, boxes_b: Tensor, eps: float = 1e-7) -> Tensor:
    """CIoU of matching rows of (N, 4) xyxy boxes: IoU minus centre-distance and aspect-ratio penalties."""
    width_a, height_a = boxes_a[:, 2] - boxes_a[:, 0], (boxes_a[:, 3] - boxes_a[:, 1]).clamp(min=eps)
    width_b, height_b = boxes_b[:, 2] - boxes_b[:, 0], (boxes_b[:, 3] - boxes_b[:, 1]).clamp(min=eps)
    overlap_w = (torch.minimum(boxes_a[:, 2], boxes_b[:, 2]) - torch.maximum(boxes_a[:, 0], boxes_b[:, 0])).clamp(0)
    overlap_h = (torch.minimum(boxes_a[:, 3], boxes_b[:, 3]) - torch.maximum(boxes_a[:, 1], boxes_b[:, 1])).clamp(0)
    intersection = overlap_w * overlap_h
    union = width_a * height_a + width_b * height_b - intersection + eps
    iou = intersection / union
    hull_w = torch.maximum(boxes_a[:, 2], boxes_b[:, 2]) - torch.minimum(boxes_a[:, 0], boxes_b[:, 0])
    hull_h = torch.maximum(boxes_a[:, 3], boxes_b[:, 3]) - torch.minimum(boxes_a[:, 1], boxes_b[:, 1])
    diagonal = hull_w.pow(2) + hull_h.pow(2) + eps
    centre_gap = (
        (boxes_b[:, 0] + boxes_b[:, 2] - boxes_a[:, 0] - boxes_a[:, 2]).pow(2)
        + (boxes_b[:, 1] + boxes_b[:, 3] - boxes_a[:, 1] - boxes_a[:, 3]).pow(2)
    ) / 4
    aspect = (4 / math.pi**2) * (torch.atan(width_b / height_b) - torch.atan(width_a / height_a)).pow(2)
    with torch.no_grad():
        alpha = aspect / (aspect - iou + (1 + eps))
    return iou - (centre_gap / diagonal + aspect * alpha)


def distribution_focal_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """(N, 4, reg_max) logits and (N, 4) distances in bins (0 <= t < reg_max - 1) -> (N,) loss, mean over sides."""
    left = targets.floor().long()
    right = left + 1
    weight_left = right.float() - targets
    weight_right = 1.0 - weight_left
    flat = logits.reshape(-1, logits.shape[-1])
    loss_left = F.cross_entropy(flat, left.reshape(-1), reduction="none").view(left.shape)
    loss_right = F.cross_entropy(flat, right.reshape(-1), reduction="none").view(left.shape)
    return (loss_left * weight_left + loss_right * weight_right).mean(dim=-1)


def pad_targets(targets: Tensor, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """(M, 6) rows batch, class, x1, y1, x2, y2 -> labels (B, K), boxes (B, K, 4), mask (B, K) with K the most per
    image."""
    device = targets.device
    counts = torch.bincount(targets[:, 0].long(), minlength=batch_size) if len(targets) else None
    most = int(counts.max()) if counts is not None else 0
    labels = torch.zeros(batch_size, most, dtype=torch.long, device=device)
    boxes = torch.zeros(batch_size, most, 4, device=device)
    mask = torch.zeros(batch_size, most, dtype=torch.bool, device=device)
    if most:
        image = targets[:, 0].long()
        order = torch.argsort(image, stable=True)
        image = image[order]
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(order), device=device) - starts[image]
        labels[image, slot] = targets[order, 1].long()
        boxes[image, slot] = targets[order, 2:6].float()
        mask[image, slot] = True
    return labels, boxes, mask


class DetectionLoss:
    """Callable loss: levels (list of (B, 4*reg_max + nc, H, W)) and targets (M, 6) -> (total, items).

    `total` is the weighted sum times the batch size (to back-propagate); `items` is a detached (3,) tensor
    box, cls, dfl per image, for logging.
    """

    def __init__(
        self,
        num_classes: int,
        strides: Sequence[int] = (4, 8, 16, 32),
        reg_max: int = 16,
        gains: LossGains | None = None,
        assigner: TaskAlignedAssigner | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.strides = tuple(strides)
        self.reg_max = reg_max
        self.gains = gains or LossGains()
        self.assigner = assigner or TaskAlignedAssigner(num_classes)

    def __call__(self, levels: Sequence[Tensor], targets: Tensor) -> tuple[Tensor, Tensor]:
        batch = levels[0].shape[0]
        sizes = [(level.shape[2], level.shape[3]) for level in levels]
        flat = torch.cat([level.float().flatten(2) for level in levels], dim=2)  # (B, 4*reg_max + nc, A)
        box_logits, class_logits = flat.split((4 * self.reg_max, self.num_classes), dim=1)
        points, strides = make_anchors(sizes, self.strides, device=flat.device, dtype=flat.dtype)  # (A, 2), (A, 1)
        distances = dfl_distances(box_logits, self.reg_max).transpose(1, 2)  # (B, A, 4) in stride units
        pred_boxes = torch.cat((points - distances[..., :2], points + distances[..., 2:]), dim=-1)  # grid units
        class_logits = class_logits.transpose(1, 2)  # (B, A, nc)

        gt_labels, gt_boxes, gt_mask = pad_targets(targets.to(flat.device), batch)
        assigned = self.assigner(
            class_logits.detach().sigmoid(),
            pred_boxes.detach() * strides,
            points * strides,
            strides,
            gt_labels,
            gt_boxes,
            gt_mask,
        )
        score_sum = assigned.scores.sum().clamp(min=1.0)
        cls_loss = F.binary_cross_entropy_with_logits(class_logits, assigned.scores, reduction="none").sum() / score_sum

        foreground = assigned.foreground
        if foreground.any():
            weight = assigned.scores.sum(dim=-1)[foreground]  # (P,)
            weight_sum = weight.sum().clamp(min=1e-9)
            target_grid = assigned.boxes[foreground] / strides.expand(batch, -1, -1)[foreground]  # (P, 4)
            ciou = complete_iou(pred_boxes[foreground], target_grid)
            box_loss = ((1.0 - ciou) * weight).sum() / weight_sum
            anchor = points.expand(batch, -1, -1)[foreground]  # (P, 2)
            target_distances = torch.cat((anchor - target_grid[:, :2], target_grid[:, 2:] - anchor), dim=-1)
            target_distances = target_distances.clamp(0, self.reg_max - 1 - 0.01)
            side_logits = box_logits.view(batch, 4, self.reg_max, -1).permute(0, 3, 1, 2)[foreground]  # (P, 4, R)
            dfl_loss = (distribution_focal_loss(side_logits, target_distances) * weight).sum() / weight_sum
        else:
            box_loss = dfl_loss = box_logits.new_zeros(())

        items = torch.stack((box_loss * self.gains.box, cls_loss * self.gains.cls, dfl_loss * self.gains.dfl))
        return items.sum() * batch, items.detach()
