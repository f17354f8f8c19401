"""Convolutional building blocks shared by the MASENet backbone, neck and head.

Every block is a small module with spelled-out arguments. Blocks that end in a BatchNorm (`Conv`, `DSConv`) expose
`fuse()`, which folds the normalisation into the preceding convolution for inference (see `model.fuse`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# BatchNorm settings of the published implementation (its weight initialiser sets them on every BatchNorm2d);
# checkpoints trained with it are only reproduced exactly with the same eps.
BATCHNORM_EPS = 1e-3
BATCHNORM_MOMENTUM = 0.03


def batchnorm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm2d with the project's eps and momentum."""
    return nn.BatchNorm2d(channels, eps=BATCHNORM_EPS, momentum=BATCHNORM_MOMENTUM)


def auto_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the spatial size at stride 1 for an odd kernel."""
    return dilation * (kernel_size - 1) // 2


def fold_batchnorm_into_conv(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a conv with bias whose output equals `norm(conv(x))` in eval mode."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # (C_out,)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
        fused.bias.copy_((conv_bias - norm.running_mean) * scale + norm.bias)
    fused.requires_grad_(conv.weight.requires_grad)
    return fused


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU; `padding` defaults to size-preserving."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        padding: int | None = None,
    ) -> None:
        super().__init__()
        padding = auto_padding(kernel_size, dilation) if padding is None else padding
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False
        )
        self.norm: nn.Module = batchnorm(out_channels)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))

    def fuse(self) -> None:
        """Fold the BatchNorm into the convolution (idempotent)."""
        if isinstance(self.norm, nn.BatchNorm2d):
            self.conv = fold_batchnorm_into_conv(self.conv, self.norm)
            self.norm = nn.Identity()


class DWConv(Conv):
    """Grouped Conv with groups = gcd(in_channels, out_channels) (depthwise when they are equal)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, groups=math.gcd(in_channels, out_channels))


class DSConv(nn.Module):
    """Depthwise-separable conv: depthwise kxk (no bias) -> pointwise 1x1 (no bias) -> BatchNorm2d -> SiLU."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1
    ) -> None:
        super().__init__()
        padding = auto_padding(kernel_size, dilation)
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, kernel_size, stride, padding, dilation=dilation, groups=in_channels, bias=False
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm: nn.Module = batchnorm(out_channels)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.pointwise(self.depthwise(x))))

    def fuse(self) -> None:
        """Fold the BatchNorm into the pointwise convolution (idempotent)."""
        if isinstance(self.norm, nn.BatchNorm2d):
            self.pointwise = fold_batchnorm_into_conv(self.pointwise, self.norm)
            self.norm = nn.Identity()


class Bottleneck(nn.Module):
    """Two Convs (kxk each) with a residual when `shortcut` and the widths match."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        shortcut: bool = True,
        groups: int = 1,
        kernel_sizes: tuple[int, int] = (3, 3),
        expansion: float = 0.5,
    ) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = Conv(in_channels, hidden, kernel_sizes[0])
        self.conv2 = Conv(hidden, out_channels, kernel_sizes[1], groups=groups)
        self.add = shortcut and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.add else y


class DSBottleneck(nn.Module):
    """Two DSConvs (kernel_size1, then kernel_size2 with dilation) with an optional residual."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        shortcut: bool = True,
        expansion: float = 0.5,
        kernel_size1: int = 3,
        kernel_size2: int = 5,
        dilation2: int = 1,
    ) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = DSConv(in_channels, hidden, kernel_size1)
        self.conv2 = DSConv(hidden, out_channels, kernel_size2, dilation=dilation2)
        self.add = shortcut and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.add else y


class CSPTwoPath(nn.Module):
    """C3-style block: a main path through `blocks` and a plain 1x1 path, concatenated and projected.

    Subclasses fill `blocks` (a chain on `hidden` channels).
    """

    def __init__(self, in_channels: int, out_channels: int, expansion: float = 0.5) -> None:
        super().__init__()
        self.hidden = int(out_channels * expansion)
        self.main = Conv(in_channels, self.hidden, 1)
        self.skip = Conv(in_channels, self.hidden, 1)
        self.blocks: nn.Module = nn.Identity()
        self.project = Conv(2 * self.hidden, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        # (B, C_in, H, W) -> 2 x (B, hidden, H, W) -> (B, C_out, H, W)
        return self.project(torch.cat((self.blocks(self.main(x)), self.skip(x)), dim=1))


class CSPSplit(nn.Module):
    """C2f-style block: a 1x1 stem split in two halves, a chain of blocks on the last piece, all kept.

    Subclasses fill `blocks` (a ModuleList of `hidden -> hidden` blocks).
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, expansion: float = 0.5) -> None:
        super().__init__()
        self.hidden = int(out_channels * expansion)
        self.stem = Conv(in_channels, 2 * self.hidden, 1)
        self.blocks = nn.ModuleList()
        self.project = Conv((2 + num_blocks) * self.hidden, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        pieces = list(self.stem(x).chunk(2, dim=1))  # 2 x (B, hidden, H, W)
        for block in self.blocks:
            pieces.append(block(pieces[-1]))
        return self.project(torch.cat(pieces, dim=1))  # (B, (2+n)*hidden, H, W) -> (B, C_out, H, W)


class DSC3k(CSPTwoPath):
    """C3-style block whose chain is `num_blocks` DSBottlenecks."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int = 1,
        shortcut: bool = True,
        expansion: float = 0.5,
        kernel_size1: int = 3,
        kernel_size2: int = 5,
        dilation2: int = 1,
    ) -> None:
        super().__init__(in_channels, out_channels, expansion)
        self.blocks = nn.Sequential(
            *(
                DSBottleneck(self.hidden, self.hidden, shortcut, 1.0, kernel_size1, kernel_size2, dilation2)
                for _ in range(num_blocks)
            )
        )


class DSC3k2(CSPSplit):
    """C2f-style block whose inner blocks are DSC3k (two DSBottlenecks each) or single DSBottlenecks."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int = 1,
        use_dsc3k: bool = False,
        expansion: float = 0.5,
        shortcut: bool = True,
        kernel_size1: int = 3,
        kernel_size2: int = 7,
    ) -> None:
        super().__init__(in_channels, out_channels, num_blocks, expansion)
        c = self.hidden
        for _ in range(num_blocks):
            if use_dsc3k:
                block: nn.Module = DSC3k(c, c, 2, shortcut, 1.0, kernel_size1, kernel_size2)
            else:
                block = DSBottleneck(c, c, shortcut, 1.0, kernel_size1, kernel_size2)
            self.blocks.append(block)


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): 1x1 reduce, three chained max-pools, concat of the four maps, 1x1."""

    def __init__(self, in_channels: int, out_channels: int, pool_size: int = 5) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.reduce = Conv(in_channels, hidden, 1)
        self.pool = nn.MaxPool2d(pool_size, stride=1, padding=pool_size // 2)
        self.project = Conv(4 * hidden, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        pieces = [self.reduce(x)]  # (B, C/2, H, W)
        for _ in range(3):
            pieces.append(self.pool(pieces[-1]))
        return self.project(torch.cat(pieces, dim=1))  # (B, 2C, H, W) -> (B, C_out, H, W)


class DownsampleConv(nn.Module):
    """2x average pool, then a 1x1 Conv doubling the width (or nothing when `channel_adjust` is False)."""

    def __init__(self, channels: int, channel_adjust: bool = True) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(kernel_size=2)
        self.expand: nn.Module = Conv(channels, 2 * channels, 1) if channel_adjust else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.expand(self.pool(x))  # (B, C, H, W) -> (B, 2C or C, H/2, W/2)


class FullPADTunnel(nn.Module):
    """Gated addition `base + gate * extra`; the scalar gate starts at 0 so the tunnel opens during training."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.tensor(0.0))

    def forward(self, base: Tensor, extra: Tensor) -> Tensor:
        return base + self.gate * extra
