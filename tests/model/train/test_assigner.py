"""Task-aligned assignment: every tiny target gets a positive, even with useless predictions."""

from __future__ import annotations

import pytest
import torch

from model.ops import make_anchors
from model.train.assigner import TaskAlignedAssigner

STRIDES = (4, 8, 16, 32)


def _anchors(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    sizes = [(size // s, size // s) for s in STRIDES]
    points, strides = make_anchors(sizes, STRIDES)
    return points * strides, strides  # pixels


def _assign(gt_boxes: torch.Tensor, pred_boxes: torch.Tensor | None = None, size: int = 64, score_target="iou"):
    points, strides = _anchors(size)
    anchors = len(points)
    if pred_boxes is None:  # far-off predictions: IoU 0 with every target
        pred_boxes = torch.tensor([[-50.0, -50.0, -40.0, -40.0]]).expand(1, anchors, 4)
    scores = torch.full((1, anchors, 2), 0.01)
    labels = torch.zeros(1, len(gt_boxes), dtype=torch.long)
    mask = torch.ones(1, len(gt_boxes), dtype=torch.bool)
    assigner = TaskAlignedAssigner(num_classes=2, score_target=score_target)
    return assigner(scores, pred_boxes, points, strides, labels, gt_boxes[None], mask)


def test_every_tiny_box_gets_a_positive_at_the_finest_level() -> None:
    # 4x4 boxes at awkward places: across cell borders, at the image edge, at cell centres.
    boxes = torch.tensor(
        [[0, 0, 4, 4], [6, 6, 10, 10], [17, 29, 21, 33], [60, 60, 64, 64], [30.5, 3.2, 34.5, 7.2], [44, 12, 46, 14]],
        dtype=torch.float32,
    )
    result = _assign(boxes)
    points, strides = _anchors()
    for index in range(len(boxes)):
        positives = result.foreground[0] & (result.gt_index[0] == index)
        assert positives.any(), f"box {boxes[index].tolist()} has no positive anchor"
        assert (strides[positives.nonzero()[:, 0], 0] == 4).any()


def test_positive_anchors_sit_inside_or_next_to_the_box_centre() -> None:
    boxes = torch.tensor([[8, 8, 40, 40]], dtype=torch.float32)
    result = _assign(boxes)
    points, _ = _anchors()
    chosen = points[result.foreground[0]]
    assert 1 <= len(chosen) <= 10  # top-k = 10
    assert ((chosen >= 8) & (chosen <= 40)).all()


def test_scores_follow_alignment_and_conflicts_go_to_the_better_overlap() -> None:
    points, strides = _anchors()
    gt = torch.tensor([[20, 20, 28, 28], [22, 22, 30, 30]], dtype=torch.float32)
    # Predictions equal to the first box everywhere: the first box aligns better wherever both compete.
    pred = gt[0].expand(1, len(points), 4).clone()
    result = _assign(gt, pred)
    first = result.foreground[0] & (result.gt_index[0] == 0)
    assert first.any()
    assert torch.allclose(result.scores[0, first, 0].max(), torch.tensor(1.0), atol=1e-4)  # best anchor: IoU 1
    assert (result.scores[0, ~result.foreground[0]] == 0).all()
    assert (result.labels[0][result.foreground[0]] == 0).all()


def test_presence_targets_lift_a_tiny_box_to_one_where_iou_targets_stay_low() -> None:
    points, _ = _anchors()
    gt = torch.tensor([[20, 20, 24, 24]], dtype=torch.float32)  # a 4 x 4 px target
    pred = torch.tensor([[21, 21, 25, 25]], dtype=torch.float32).expand(1, len(points), 4)  # one pixel off
    by_iou, by_presence = _assign(gt, pred), _assign(gt, pred, score_target="presence")
    assert torch.equal(by_iou.foreground, by_presence.foreground)  # same positives, other targets
    assert abs(by_iou.scores.max().item() - 9 / 23) < 1e-4  # IoU of two 4 x 4 boxes one pixel off diagonally
    assert abs(by_presence.scores.max().item() - 1.0) < 1e-4
    assert (by_presence.scores[0, ~by_presence.foreground[0]] == 0).all()


def test_unknown_score_target_is_refused() -> None:
    with pytest.raises(ValueError, match="presence"):
        TaskAlignedAssigner(num_classes=1, score_target="quality")


def test_no_targets_gives_no_positives() -> None:
    result = _assign(torch.zeros(0, 4))
    assert not result.foreground.any() and result.scores.sum() == 0
