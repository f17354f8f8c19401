"""Task-aligned label assignment (TAL, from TOOD) adapted to targets of a few pixels.

For every ground-truth box the assigner scores candidate anchors with the alignment metric
`score(gt class) ** alpha * IoU(pred box, gt box) ** beta`, keeps the `topk` best candidates as positives,
resolves an anchor claimed by several boxes in favour of the box it overlaps most, and gives each positive a
soft class target: its metric normalised per box so the best anchor of a box gets that box's best IoU.

Class targets. With `score_target="iou"` (TOOD, YOLOv8 and later) the best anchor of a box learns that box's
best IoU, so scores rank box quality too; a box of a few pixels never gets a high IoU (one pixel off on a 4 x 4
box is IoU 0.39). With `score_target="presence"` the best anchor of every box learns 1 and the other positives
their metric relative to it: the score says only whether a target is there. On the project's held-out frames a
presence fine-tune raised all scores alike and found no more targets at equal false alarms (docs/model-history.md).

Candidates. Plain TAL takes only anchors whose centre lies inside the box. A 4 x 4 px box contains no anchor
centre at stride 8 or more and at most one (sometimes none, when it straddles cells) at stride 4, so some tiny
targets would never be trained. Here an anchor is also a candidate when it belongs to the finest level and its
centre is within half a cell (Chebyshev distance <= stride / 2) of the box centre: the anchor(s) of the cell
holding the centre. For boxes of at least one finest stride (4 px, the label floor) those anchors lie inside
or on the border of the box, so their regression targets stay valid. Should a box still have no candidate
(its centre outside the image), its nearest finest-level anchor is taken. Candidates also win ties in the
top-k selection over non-candidates, so each box keeps at least one positive however bad the predictions are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from model.ops import box_iou


@dataclass
class Assignment:
    """Per anchor: target class (B, A), target box xyxy px (B, A, 4), soft class scores (B, A, nc), positives."""

    labels: Tensor
    boxes: Tensor
    scores: Tensor
    foreground: Tensor
    gt_index: Tensor


def _pairwise_iou(pred_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """(B, A, 4) x (B, M, 4) -> (B, M, A) IoU."""
    return torch.stack([box_iou(gt, pred) for gt, pred in zip(gt_boxes, pred_boxes, strict=True)])


SCORE_TARGETS = ("iou", "presence")


class TaskAlignedAssigner:
    """TAL with the small-target candidate rule described in the module docstring."""

    def __init__(
        self,
        num_classes: int,
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        score_target: str = "iou",
        eps: float = 1e-9,
    ):
        if score_target not in SCORE_TARGETS:
            raise ValueError(f"unknown score_target {score_target!r}; choose one of {', '.join(SCORE_TARGETS)}")
        self.num_classes = num_classes
        self.score_target = score_target
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.eps = eps

    def candidates(self, anchor_points: Tensor, anchor_strides: Tensor, gt_boxes: Tensor) -> Tensor:
        """(B, M, A) boolean: anchors (A, 2) px inside each gt box (B, M, 4), or next to its centre at the finest
        stride."""
        points = anchor_points[None, None]  # (1, 1, A, 2)
        top_left, bottom_right = gt_boxes[:, :, None, :2], gt_boxes[:, :, None, 2:]
        inside = torch.cat((points - top_left, bottom_right - points), dim=-1).amin(dim=-1) > self.eps  # (B, M, A)
        finest_stride = anchor_strides.min()
        finest = anchor_strides[:, 0] == finest_stride  # (A,)
        centres = (top_left + bottom_right) / 2  # (B, M, 1, 2)
        gap = (points - centres).abs().amax(dim=-1)  # (B, M, A) Chebyshev distance to the box centre
        near = (gap <= finest_stride / 2 + self.eps) & finest
        chosen = inside | near
        nearest = gap.masked_fill(~finest, float("inf")).argmin(dim=-1, keepdim=True)  # (B, M, 1)
        lonely = ~chosen.any(dim=-1, keepdim=True)
        fallback = torch.zeros_like(chosen).scatter_(-1, nearest, True) & lonely
        return chosen | fallback

    @torch.no_grad()
    def __call__(
        self,
        pred_scores: Tensor,
        pred_boxes: Tensor,
        anchor_points: Tensor,
        anchor_strides: Tensor,
        gt_labels: Tensor,
        gt_boxes: Tensor,
        gt_mask: Tensor,
    ) -> Assignment:
        """Assign targets.

        pred_scores (B, A, nc) sigmoid scores, pred_boxes (B, A, 4) xyxy px, anchor_points (A, 2) px,
        anchor_strides (A, 1), gt_labels (B, M) class ids, gt_boxes (B, M, 4) xyxy px, gt_mask (B, M) bool for
        real (not padding) boxes.
        """
        batch, anchors, _ = pred_scores.shape
        device = pred_scores.device
        if gt_boxes.shape[1] == 0:
            return Assignment(
                labels=torch.zeros(batch, anchors, dtype=torch.long, device=device),
                boxes=torch.zeros(batch, anchors, 4, device=device),
                scores=torch.zeros(batch, anchors, self.num_classes, device=device),
                foreground=torch.zeros(batch, anchors, dtype=torch.bool, device=device),
                gt_index=torch.zeros(batch, anchors, dtype=torch.long, device=device),
            )
        pred_scores, pred_boxes, gt_boxes = pred_scores.float(), pred_boxes.float(), gt_boxes.float()
        valid = self.candidates(anchor_points.float(), anchor_strides.float(), gt_boxes) & gt_mask[:, :, None]
        overlaps = _pairwise_iou(pred_boxes, gt_boxes).clamp(min=0) * valid  # (B, M, A)
        class_index = gt_labels.long().clamp(0, self.num_classes - 1)[:, :, None].expand(-1, -1, anchors)
        scores = pred_scores.transpose(1, 2).gather(1, class_index) * valid  # (B, M, A) score of the gt class
        metric = scores.pow(self.alpha) * overlaps.pow(self.beta)

        # Top-k per gt among candidates; the tiny bonus makes candidates win ties at metric 0.
        ranking = metric + valid.float() * self.eps
        topk = min(self.topk, anchors)
        top = ranking.topk(topk, dim=-1).indices  # (B, M, k)
        selected = torch.zeros_like(valid).scatter_(-1, top, True) & valid  # (B, M, A)

        # An anchor claimed by several gts goes to the one it overlaps most.
        claims = selected.sum(dim=1)  # (B, A)
        if (claims > 1).any():
            contested = (claims > 1)[:, None, :]
            best_gt = ((overlaps + self.eps) * selected).argmax(dim=1, keepdim=True)  # (B, 1, A), among claimants
            winner = torch.zeros_like(selected).scatter_(1, best_gt, True)
            selected = torch.where(contested, winner, selected)
        foreground = selected.any(dim=1)  # (B, A)
        gt_index = selected.float().argmax(dim=1)  # (B, A)

        labels = gt_labels.long().gather(1, gt_index)  # (B, A)
        boxes = gt_boxes.gather(1, gt_index[:, :, None].expand(-1, -1, 4))  # (B, A, 4)
        metric = metric * selected
        best_metric = metric.amax(dim=-1, keepdim=True)  # (B, M, 1)
        best_overlap = (overlaps * selected).amax(dim=-1, keepdim=True)
        if self.score_target == "presence":
            best_overlap = torch.ones_like(best_overlap)
        normalised = (metric * best_overlap / (best_metric + self.eps)).amax(dim=1)  # (B, A)
        one_hot = torch.nn.functional.one_hot(labels.clamp(0, self.num_classes - 1), self.num_classes).float()
        target_scores = one_hot * (normalised * foreground)[:, :, None]
        return Assignment(labels=labels, boxes=boxes, scores=target_scores, foreground=foreground, gt_index=gt_index)
