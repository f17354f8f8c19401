"""MASEM-Head: MASEM on every level, four-level adaptive spatial fusion, then a decoupled DFL head.

The head returns raw per-level maps; decoding (anchors, DFL expectation, sigmoid) is `model.ops.decode_levels`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model.layers import Conv, DWConv
from model.masem import FASFF, MASEM

REG_MAX = 16
STRIDES = (4, 8, 16, 32)


class BoxBranch(nn.Module):
    """Conv 3x3 -> Conv 3x3 -> Conv2d 1x1 to 4 * reg_max distance-bin logits."""

    def __init__(self, in_channels: int, hidden: int, reg_max: int = REG_MAX) -> None:
        super().__init__()
        self.conv1 = Conv(in_channels, hidden, 3)
        self.conv2 = Conv(hidden, hidden, 3)
        self.pred = nn.Conv2d(hidden, 4 * reg_max, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pred(self.conv2(self.conv1(x)))


class ClassBranch(nn.Module):
    """Two (depthwise 3x3, pointwise 1x1) Conv pairs -> Conv2d 1x1 to `num_classes` logits."""

    def __init__(self, in_channels: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.dw1 = DWConv(in_channels, in_channels, 3)
        self.pw1 = Conv(in_channels, hidden, 1)
        self.dw2 = DWConv(hidden, hidden, 3)
        self.pw2 = Conv(hidden, hidden, 1)
        self.pred = nn.Conv2d(hidden, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pred(self.pw2(self.dw2(self.pw1(self.dw1(x)))))


class MASEMHead(nn.Module):
    """Four-level detection head (P2..P5, strides 4, 8, 16, 32).

    `forward` maps the neck outputs (P2, P3, P4, P5) to four raw maps `(B, 4 * reg_max + nc, H_i, W_i)`, box bin
    logits first, class logits after. `dfl_bins` holds the fixed 0..reg_max-1 projection of the distance bins
    (a frozen parameter, so checkpoints carry it).
    """

    def __init__(self, num_classes: int, channels: tuple[int, int, int, int], reg_max: int = REG_MAX) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.strides = STRIDES
        box_hidden = max(16, channels[0] // 4, 4 * reg_max)
        cls_hidden = max(channels[0], min(num_classes, 100))
        self.masem = nn.ModuleList(MASEM(c) for c in channels)
        # fusions[i] produces output level i (P2..P5); FASFF counts its levels from P5.
        self.fusions = nn.ModuleList(FASFF(3 - i, channels) for i in range(4))
        self.box_branches = nn.ModuleList(BoxBranch(c, box_hidden, reg_max) for c in channels)
        self.cls_branches = nn.ModuleList(ClassBranch(c, cls_hidden, num_classes) for c in channels)
        self.dfl_bins = nn.Parameter(torch.arange(reg_max, dtype=torch.float32), requires_grad=False)

    def initialize_biases(self) -> None:
        """Box logits start at 1.0; class logits at the prior of 5 objects per 640x640 image per class."""
        with torch.no_grad():
            for box, cls, stride in zip(self.box_branches, self.cls_branches, self.strides, strict=True):
                box.pred.bias.fill_(1.0)
                cls.pred.bias.fill_(math.log(5 / self.num_classes / (640 / stride) ** 2))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        enhanced = [masem(f) for masem, f in zip(self.masem, features, strict=True)]  # P2..P5, widths unchanged
        fused = [fusion(enhanced) for fusion in self.fusions]  # P2..P5
        # per level: (B, 4 * reg_max, H, W) ++ (B, nc, H, W)
        return [
            torch.cat((box(f), cls(f)), dim=1)
            for f, box, cls in zip(fused, self.box_branches, self.cls_branches, strict=True)
        ]
