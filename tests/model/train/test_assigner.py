"""Task-aligned assignment: every tiny target gets a positive, even with useless predictions."""

from __future__ import annotations

import torch

from model.ops import make_anchors
from model.train.assigner import TaskAlignedAssigner

STRIDES = (4, 8, 16, 32)


def _anchors(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    sizes = [(size // s, size // s) for s in STRIDES]
    points, strides = make_anchors(sizes, STRIDES)
    return points * strides, strides  # pixels


def _assign(gt_boxes: torch.Tensor, pred_boxes: torch.Tensor | None = None, size: int = 64):
    points, strides = _anchors(size)
    anchors = len(points)
    if pred_boxes is None:  # far-off predictions: IoU 0 with every target
        pred_boxes = torch.tensor([[-50.0, -50.0, -40.0, -40.0]]).expand(1, anchors, 4)
    scores = torch.full((1, anchors, 2), 0.01)
    labels = torch.zeros(1, len(gt_boxes), dtype=torch.long)
    mask = torch.ones(1, len(gt_boxes), dtype=torch.bool)
    return TaskAlignedAssigner(num_classes=2)(scores, pred_boxes, points, strides, labels, gt_boxes[None], mask)


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


def test_no_targets_gives_no_positives() -> None:
    result = _assign(torch.zeros(0, 4))
    assert not result.foreground.any() and result.scores.sum() == 0
