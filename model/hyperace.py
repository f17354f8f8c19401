"""HyperACE: hypergraph-based adaptive correlation enhancement (the YOLOv13 neck hub).

Three backbone levels are fused on the middle grid, split into three pieces; one piece goes through two adaptive
hypergraph branches (high-order correlations between all pixels), another through a chain of depthwise-separable
blocks (low-order, local correlations); everything is concatenated and projected.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.layers import Conv, DSBottleneck, DSC3k

ContextMode = Literal["mean", "max", "both"]


class AdaHyperedgeGen(nn.Module):
    """Soft participation matrix A (B, N, E) of N tokens in E adaptive hyperedges.

    Each hyperedge is a learnable prototype plus a per-sample offset predicted from the global context (mean and/or
    max over tokens). Similarity is a multi-head dot product averaged over heads; the softmax runs over the tokens.
    """

    def __init__(
        self,
        dim: int,
        num_hyperedges: int,
        num_heads: int = 4,
        dropout: float = 0.1,
        context: ContextMode = "both",
    ) -> None:
        super().__init__()
        if context not in ("mean", "max", "both"):
            raise ValueError(f"context must be 'mean', 'max' or 'both', got {context!r}")
        self.num_heads = num_heads
        self.num_hyperedges = num_hyperedges
        self.head_dim = dim // num_heads
        self.context = context
        self.prototypes = nn.Parameter(torch.empty(num_hyperedges, dim))
        nn.init.xavier_uniform_(self.prototypes)
        context_dim = 2 * dim if context == "both" else dim
        self.context_proj = nn.Linear(context_dim, num_hyperedges * dim)
        self.token_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def _context(self, tokens: Tensor) -> Tensor:
        if self.context == "mean":
            return tokens.mean(dim=1)
        if self.context == "max":
            return tokens.amax(dim=1)
        return torch.cat((tokens.mean(dim=1), tokens.amax(dim=1)), dim=-1)  # (B, 2D)

    def forward(self, tokens: Tensor) -> Tensor:
        batch, num_tokens, dim = tokens.shape
        heads, head_dim, edges = self.num_heads, self.head_dim, self.num_hyperedges
        offsets = self.context_proj(self._context(tokens)).view(batch, edges, dim)
        prototypes = self.prototypes.unsqueeze(0) + offsets  # (B, E, D)
        queries = self.token_proj(tokens).view(batch, num_tokens, heads, head_dim).transpose(1, 2)  # (B, h, N, d)
        keys = prototypes.view(batch, edges, heads, head_dim).permute(0, 2, 3, 1)  # (B, h, d, E)
        logits = torch.matmul(queries, keys) / math.sqrt(head_dim)  # (B, h, N, E)
        logits = self.dropout(logits.mean(dim=1))  # (B, N, E)
        return F.softmax(logits, dim=1)  # normalised over tokens


class AdaHGConv(nn.Module):
    """One hypergraph convolution: nodes -> hyperedges -> nodes, with a residual."""

    def __init__(
        self,
        dim: int,
        num_hyperedges: int = 16,
        num_heads: int = 4,
        dropout: float = 0.1,
        context: ContextMode = "both",
    ) -> None:
        super().__init__()
        self.edge_generator = AdaHyperedgeGen(dim, num_hyperedges, num_heads, dropout, context)
        self.edge_proj = nn.Linear(dim, dim)
        self.node_proj = nn.Linear(dim, dim)

    def forward(self, tokens: Tensor) -> Tensor:
        incidence = self.edge_generator(tokens)  # (B, N, E)
        edges = F.gelu(self.edge_proj(torch.bmm(incidence.transpose(1, 2), tokens)))  # (B, E, D)
        nodes = F.gelu(self.node_proj(torch.bmm(incidence, edges)))  # (B, N, D)
        return nodes + tokens


class AdaHGComputation(nn.Module):
    """AdaHGConv on a feature map: every pixel is a token of `dim` channels."""

    def __init__(
        self,
        dim: int,
        num_hyperedges: int = 16,
        num_heads: int = 8,
        dropout: float = 0.1,
        context: ContextMode = "both",
    ) -> None:
        super().__init__()
        self.hypergraph = AdaHGConv(dim, num_hyperedges, num_heads, dropout, context)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        tokens = self.hypergraph(tokens)
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


class C3AH(nn.Module):
    """C3-style block with an adaptive hypergraph computation on its main path (heads = hidden / 16)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expansion: float = 1.0,
        num_hyperedges: int = 8,
        context: ContextMode = "both",
    ) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        if hidden % 16 != 0:
            raise ValueError(f"C3AH hidden width must be a multiple of 16, got {hidden}")
        self.main = Conv(in_channels, hidden, 1)
        self.skip = Conv(in_channels, hidden, 1)
        self.graph = AdaHGComputation(hidden, num_hyperedges, hidden // 16, dropout=0.1, context=context)
        self.project = Conv(2 * hidden, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        # (B, C_in, H, W) -> 2 x (B, hidden, H, W) -> (B, C_out, H, W)
        return self.project(torch.cat((self.graph(self.main(x)), self.skip(x)), dim=1))


class FuseModule(nn.Module):
    """Bring three levels (strides s/2, s, 2s) onto the middle grid, concat, 1x1 Conv to `channels`.

    With `channel_adjust` the coarse input has twice the width, so the concat has 4x `channels`, else 3x.
    """

    def __init__(self, channels: int, channel_adjust: bool) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(kernel_size=2)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.project = Conv((4 if channel_adjust else 3) * channels, channels, 1)

    def forward(self, fine: Tensor, middle: Tensor, coarse: Tensor) -> Tensor:
        stacked = torch.cat((self.pool(fine), middle, self.upsample(coarse)), dim=1)  # (B, 3C or 4C, H, W)
        return self.project(stacked)


class HyperACE(nn.Module):
    """Hypergraph adaptive correlation enhancement over three backbone levels, output on the middle grid."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int = 1,
        num_hyperedges: int = 8,
        use_dsc3k: bool = True,
        shortcut: bool = False,
        expansion1: float = 0.5,
        expansion2: float = 1.0,
        context: ContextMode = "both",
        channel_adjust: bool = True,
    ) -> None:
        super().__init__()
        c = int(out_channels * expansion1)
        self.hidden = c
        self.fuse = FuseModule(in_channels, channel_adjust)
        self.stem = Conv(in_channels, 3 * c, 1)
        self.high_order_a = C3AH(c, c, expansion2, num_hyperedges, context)
        self.high_order_b = C3AH(c, c, expansion2, num_hyperedges, context)
        self.low_order = nn.ModuleList(
            DSC3k(c, c, 2, shortcut, kernel_size1=3, kernel_size2=7) if use_dsc3k else DSBottleneck(c, c, shortcut)
            for _ in range(num_blocks)
        )
        self.project = Conv((4 + num_blocks) * c, out_channels, 1)

    def forward(self, fine: Tensor, middle: Tensor, coarse: Tensor) -> Tensor:
        x = self.fuse(fine, middle, coarse)  # (B, C_in, H, W) on the middle grid
        local, graph_input, chain = self.stem(x).chunk(3, dim=1)  # 3 x (B, c, H, W)
        pieces = [local, self.high_order_a(graph_input), chain]
        for block in self.low_order:
            pieces.append(block(pieces[-1]))
        pieces.append(self.high_order_b(graph_input))
        return self.project(torch.cat(pieces, dim=1))  # (B, (4+n)c, H, W) -> (B, C_out, H, W)
