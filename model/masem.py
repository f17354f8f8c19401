"""MASENet's own blocks: MASEM attention, the MCAFEM feature block and four-level adaptive spatial fusion (FASFF).

- MASEM (multi-level adaptive selection and enhancement module): two cascaded depthwise receptive fields, a
  GroupNorm-driven gate, a channel selection between the two fields and a spatial selection, applied as
  `x + x * attention`.
- MCAFEM: a feature block with four parallel pieces (1x1, inverted depthwise bottleneck, identity, MASEM), a chain of
  bottlenecks, and a depthwise-separable residual path.
- FASFF: adaptive spatial feature fusion of three neighbouring levels onto one output grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.layers import Bottleneck, Conv


class DepthwiseSeparableField(nn.Module):
    """Depthwise 3x3 then pointwise 1x1, both plain Conv2d with bias (one receptive-field step of MASEM)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.pointwise = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class MASEM(nn.Module):
    """Multi-level adaptive selection and enhancement: `x + x * attention(x)`, shape preserving."""

    def __init__(self, channels: int, groups: int = 8, gate_threshold: float = 0.5, compress: int = 8) -> None:
        super().__init__()
        half = channels // 2
        self.gate_threshold = gate_threshold
        self.field1 = DepthwiseSeparableField(channels)
        self.field2 = DepthwiseSeparableField(channels)
        self.squeeze1 = nn.Conv2d(channels, half, 1)
        self.squeeze2 = nn.Conv2d(channels, half, 1)
        self.gate_reduce = nn.Conv2d(channels, half, 1)
        self.gate_norm = nn.GroupNorm(groups, half)
        self.select1 = nn.Conv2d(half, compress, 1)
        self.select2 = nn.Conv2d(half, compress, 1)
        self.select_logits = nn.Conv2d(2 * compress, 2, 1)
        self.spatial_conv = nn.Conv2d(2, 2, 3, padding=1)
        self.out_proj = nn.Conv2d(channels, channels, 1)

    def _gate(self, g1: Tensor, g2: Tensor) -> Tensor:
        reduced = self.gate_norm(self.gate_reduce(torch.cat((g1, g2), dim=1)))  # (B, C/2, H, W)
        gamma = self.gate_norm.weight / self.gate_norm.weight.sum()
        gate = torch.sigmoid(reduced * gamma.view(1, -1, 1, 1))
        return torch.where(gate > self.gate_threshold, torch.ones_like(gate), gate)

    def forward(self, x: Tensor) -> Tensor:
        a1 = self.field1(x)  # (B, C, H, W)
        a2 = self.field2(a1)  # (B, C, H, W), larger receptive field
        g1, g2 = self.squeeze1(a1), self.squeeze2(a2)  # 2 x (B, C/2, H, W)
        gate = self._gate(g1, g2)
        g1, g2 = g1 * gate, g2 * gate
        choice = self.select_logits(torch.cat((self.select1(g1), self.select2(g2)), dim=1)).softmax(dim=1)  # (B,2,H,W)
        selected = torch.cat((g1 * choice[:, 0:1], g2 * choice[:, 1:2]), dim=1)  # (B, C, H, W)
        pooled = torch.cat((selected.mean(dim=1, keepdim=True), selected.amax(dim=1, keepdim=True)), dim=1)
        spatial = torch.sigmoid(self.spatial_conv(pooled))  # (B, 2, H, W)
        attended = selected * spatial[:, 0:1] + selected * spatial[:, 1:2]
        return x + x * self.out_proj(attended)


class InvertedBranch(nn.Module):
    """1x1 Conv expand -> depthwise kxk Conv -> 1x1 Conv reduce."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.expand = Conv(in_channels, hidden, 1)
        self.depthwise = Conv(hidden, hidden, kernel_size, groups=hidden)
        self.reduce = Conv(hidden, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.reduce(self.depthwise(self.expand(x)))


class ResidualAdapter(nn.Module):
    """Depthwise 3x3 Conv then 1x1 Conv: the residual path of MCAFEM (always present, also when widths match)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise = Conv(in_channels, in_channels, 3, groups=in_channels)
        self.pointwise = Conv(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class MCAFEM(nn.Module):
    """Multi-branch context-aware feature enhancement block (replaces the YOLOv13 feature blocks)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int = 1,
        shortcut: bool = False,
        hidden_ratio: float = 1.0,
        kernel_size: int = 3,
        groups: int = 1,
        expansion: float = 0.5,
    ) -> None:
        super().__init__()
        c = int(out_channels * expansion)
        self.hidden = c
        self.stem = Conv(in_channels, 2 * c, 1)
        self.pointwise_branch = Conv(2 * c, c, 1)
        self.inverted_branch = InvertedBranch(2 * c, int(hidden_ratio * 2 * c), c, kernel_size)
        self.masem = MASEM(c)
        self.blocks = nn.ModuleList(
            Bottleneck(c, c, shortcut, groups, kernel_sizes=(3, 3), expansion=1.0) for _ in range(num_blocks)
        )
        self.project = Conv((4 + num_blocks) * c, out_channels, 1)
        self.residual = ResidualAdapter(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.stem(x)  # (B, 2c, H, W)
        identity_half, attention_half = y.chunk(2, dim=1)  # 2 x (B, c, H, W)
        pieces = [self.pointwise_branch(y), self.inverted_branch(y), identity_half, self.masem(attention_half)]
        for block in self.blocks:
            pieces.append(block(pieces[-1]))
        return self.project(torch.cat(pieces, dim=1)) + self.residual(x)  # (B, C_out, H, W)


class Resample(nn.Module):
    """Bring one level onto the output grid: optional 3x3/s2 max-pool, optional Conv, optional nearest upsample."""

    def __init__(self, conv: Conv | None = None, pre_pool: bool = False, upsample: int = 1) -> None:
        super().__init__()
        self.pre_pool = pre_pool
        self.upsample = upsample
        self.conv: nn.Module = conv if conv is not None else nn.Identity()

    @property
    def downsamples(self) -> bool:
        """True when the conv is strided (the level is finer than the output grid)."""
        return isinstance(self.conv, Conv) and self.conv.conv.stride[0] > 1

    def forward(self, x: Tensor) -> Tensor:
        if self.pre_pool:
            x = F.max_pool2d(x, 3, stride=2, padding=1)
        x = self.conv(x)
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
        return x


class FASFF(nn.Module):
    """Adaptive spatial fusion of three levels onto one output level.

    `level` counts from the coarsest output: 0 -> P5, 1 -> P4, 2 -> P3, 3 -> P2. `channels` are the widths of
    (P2, P3, P4, P5). `forward` takes the four maps (P2..P5) and fuses the three it needs, coarse to fine; each
    resampled map gets a per-pixel weight from a softmax over the three.
    """

    def __init__(self, level: int, channels: tuple[int, int, int, int], compress: int = 16) -> None:
        super().__init__()
        if level not in (0, 1, 2, 3):
            raise ValueError(f"FASFF level must be 0..3, got {level}")
        c2, c3, c4, c5 = channels
        self.level = level
        width = (c5, c4, c3, c2)[level]
        self.width = width
        if level == 0:  # P5 grid from P5, P4, P3
            self.sources = (3, 2, 1)
            resamplers = [Resample(), Resample(Conv(c4, width, 3, 2)), Resample(Conv(c3, width, 3, 2), pre_pool=True)]
        elif level == 1:  # P4 grid from P5, P4, P3
            self.sources = (3, 2, 1)
            resamplers = [Resample(Conv(c5, width, 1), upsample=2), Resample(), Resample(Conv(c3, width, 3, 2))]
        elif level == 2:  # P3 grid from P4, P3, P2
            self.sources = (2, 1, 0)
            resamplers = [Resample(Conv(c4, width, 1), upsample=2), Resample(), Resample(Conv(c2, width, 3, 2))]
        else:  # P2 grid from P4, P3, P2
            self.sources = (2, 1, 0)
            resamplers = [
                Resample(Conv(c4, width, 1), upsample=4),
                Resample(Conv(c3, width, 1), upsample=2),
                Resample(),
            ]
        self.resamplers = nn.ModuleList(resamplers)
        self.weight_convs = nn.ModuleList(Conv(width, compress, 1) for _ in range(3))
        self.weight_logits = Conv(3 * compress, 3, 1)
        self.refine = Conv(width, width, 3)

    def forward(self, levels: list[Tensor]) -> Tensor:
        pairs = zip(self.resamplers, self.sources, strict=True)
        resized = [resample(levels[i]) for resample, i in pairs]  # 3 x (B, width, H, W), coarse to fine
        votes = [conv(r) for conv, r in zip(self.weight_convs, resized, strict=True)]  # 3 x (B, 16, H, W)
        weights = self.weight_logits(torch.cat(votes, dim=1)).softmax(dim=1)  # (B, 3, H, W)
        fused = resized[0] * weights[:, 0:1] + resized[1] * weights[:, 1:2] + resized[2] * weights[:, 2:3]
        return self.refine(fused)
