"""The detection loss is finite and differentiable with and without targets, and rewards good boxes."""

from __future__ import annotations

import torch

from model.masenet import build_model
from model.train.loss import DetectionLoss, complete_iou, distribution_focal_loss, pad_targets


def _levels(batch: int = 2, nc: int = 1, size: int = 64, requires_grad: bool = True) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(batch, 64 + nc, size // s, size // s, requires_grad=requires_grad) for s in (4, 8, 16, 32)]


def test_loss_finite_with_and_without_targets() -> None:
    loss = DetectionLoss(num_classes=1)
    levels = _levels()
    targets = torch.tensor([[0, 0, 10, 10, 14, 14], [1, 0, 40, 30, 46, 36]], dtype=torch.float32)
    total, items = loss(levels, targets)
    assert torch.isfinite(total) and torch.isfinite(items).all() and (items > 0).all()
    total.backward()
    assert all(torch.isfinite(level.grad).all() and level.grad.abs().sum() > 0 for level in levels)

    empty_levels = _levels()
    total, items = loss(empty_levels, torch.zeros(0, 6))
    assert torch.isfinite(total) and items[0] == 0 and items[2] == 0 and items[1] > 0
    total.backward()
    assert torch.isfinite(empty_levels[0].grad).all()


def test_loss_on_the_real_network_output() -> None:
    model = build_model(scale="n", nc=2).train()
    images = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 1, 5, 5, 9, 9], [1, 0, 20, 30, 32, 40]], dtype=torch.float32)
    total, items = DetectionLoss(num_classes=2, strides=model.strides, reg_max=model.reg_max)(model(images), targets)
    total.backward()
    assert torch.isfinite(total) and items.shape == (3,)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_complete_iou_and_dfl_basics() -> None:
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    others = torch.tensor([[0.0, 0.0, 2.0, 2.0], [4.0, 4.0, 6.0, 6.0]])
    ciou = complete_iou(boxes, others)
    assert torch.allclose(ciou[0], torch.tensor(1.0), atol=1e-5) and ciou[1] < 0
    logits = torch.full((1, 4, 16), -10.0)
    logits[0, :, 3] = 10.0
    sharp = distribution_focal_loss(logits, torch.full((1, 4), 3.0))
    wrong = distribution_focal_loss(logits, torch.full((1, 4), 8.0))
    assert sharp.item() < 1e-3 < wrong.item()


def test_pad_targets_groups_rows_by_image() -> None:
    targets = torch.tensor([[1, 0, 1, 1, 2, 2], [0, 1, 3, 3, 4, 4], [1, 1, 5, 5, 6, 6]], dtype=torch.float32)
    labels, boxes, mask = pad_targets(targets, batch_size=3)
    assert labels.shape == (3, 2) and mask.tolist() == [[True, False], [True, True], [False, False]]
    assert boxes[1, 1].tolist() == [5, 5, 6, 6] and labels[1].tolist() == [0, 1]


def test_better_predictions_give_lower_box_loss() -> None:
    loss = DetectionLoss(num_classes=1)
    targets = torch.tensor([[0, 0, 10, 10, 14, 14]], dtype=torch.float32)
    levels = _levels(batch=1, requires_grad=False)
    before = loss(levels, targets)[1]
    optimiser = torch.optim.Adam([level.requires_grad_() for level in levels], lr=0.05)
    for _ in range(30):
        total, _ = loss(levels, targets)
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
    after = loss(levels, targets)[1]
    assert after.sum() < before.sum() and after[0] < before[0]
