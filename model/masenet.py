"""MASENet: Multi-level Adaptive Selection and Enhancement Network for infrared small-target detection.

The YOLOv13 design (HyperACE neck hub, FullPAD tunnels) with MCAFEM feature blocks, a fourth output level at
stride 4 (P2) and the MASEM-Head. The architecture follows `shared/design/masenet-architecture.md`; the graph
indices used there (0..39) are kept in `GRAPH_LAYERS` so checkpoints in the published naming can be converted
(`model.convert`) and per-layer numbers checked.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.head import REG_MAX, STRIDES, MASEMHead
from model.hyperace import HyperACE
from model.layers import SPPF, Conv, DownsampleConv, DSC3k2, DSConv, FullPADTunnel
from model.masem import MCAFEM

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScaleConfig:
    """Compound scaling of the base graph.

    A base width `c` becomes `ceil8(min(c, max_channels) * width)`; a repeat count `r > 1` becomes
    `max(round(r * depth), 1)`. `large` switches on the YOLOv13 rules of scales l and x: FuseModule without channel
    adjust, DownsampleConv without channel doubling, DSC3k inner blocks in every DSC3k2.
    """

    name: str
    depth: float
    width: float
    max_channels: int
    hyperedges: int
    large: bool

    def channels(self, base: int) -> int:
        return int(math.ceil(min(base, self.max_channels) * self.width / 8) * 8)

    def repeats(self, base: int) -> int:
        return max(round(base * self.depth), 1) if base > 1 else base


SCALES: dict[str, ScaleConfig] = {
    "n": ScaleConfig("n", depth=0.50, width=0.25, max_channels=1024, hyperedges=4, large=False),
    "s": ScaleConfig("s", depth=0.50, width=0.50, max_channels=1024, hyperedges=8, large=False),
    "l": ScaleConfig("l", depth=1.00, width=1.00, max_channels=512, hyperedges=8, large=True),
    "x": ScaleConfig("x", depth=1.00, width=1.50, max_channels=512, hyperedges=12, large=True),
}

VARIANTS: dict[str, str] = {f"masenet-{scale}": scale for scale in SCALES}

# Graph index of the specification -> attribute path in MASENet. Indices without parameters (upsample, concat)
# have no module and are left out.
GRAPH_LAYERS: dict[int, str] = {
    0: "backbone.stem",
    1: "backbone.down1",
    2: "backbone.stage1",
    3: "backbone.down2",
    4: "backbone.stage2",
    5: "backbone.down3",
    6: "backbone.stage3",
    7: "backbone.down4",
    8: "backbone.stage4",
    9: "backbone.sppf",
    10: "neck.hyperace",
    12: "neck.hyper_down",
    13: "neck.tunnel_p4_in",
    14: "neck.tunnel_p3_in",
    15: "neck.tunnel_p5_in",
    18: "neck.top_down_p4",
    19: "neck.tunnel_top_down_p4",
    22: "neck.top_down_p3",
    23: "neck.lateral_p3",
    24: "neck.tunnel_top_down_p3",
    27: "neck.out_p2",
    28: "neck.down_p2",
    30: "neck.out_p3",
    31: "neck.down_p3",
    33: "neck.out_p4",
    34: "neck.tunnel_out_p4",
    35: "neck.down_p4",
    37: "neck.out_p5",
    38: "neck.tunnel_out_p5",
    39: "head",
}


def _upsample(x: Tensor) -> Tensor:
    return nn.functional.interpolate(x, scale_factor=2, mode="nearest")


class Backbone(nn.Module):
    """Graph layers 0..9: stride-2 convs and MCAFEM stages down to P5, then SPPF. Returns (P3, P4, P5, P2)."""

    def __init__(self, scale: ScaleConfig, in_channels: int) -> None:
        super().__init__()
        ch, rep = scale.channels, scale.repeats
        c0, c1, c2, c3, c4, c5, c6, c7, c8 = (ch(c) for c in (64, 128, 256, 256, 512, 512, 512, 1024, 1024))
        self.stem = Conv(in_channels, c0, 3, 2)
        self.down1 = Conv(c0, c1, 3, 2, groups=2)
        self.stage1 = MCAFEM(c1, c2, rep(2), shortcut=True, hidden_ratio=2, kernel_size=3)
        self.down2 = Conv(c2, c3, 3, 2, groups=4)
        self.stage2 = MCAFEM(c3, c4, rep(4), shortcut=True, hidden_ratio=2, kernel_size=3)
        self.down3 = DSConv(c4, c5, 3, 2)
        self.stage3 = MCAFEM(c5, c6, rep(4), shortcut=True, hidden_ratio=2, kernel_size=3)
        self.down4 = DSConv(c6, c7, 3, 2)
        self.stage4 = MCAFEM(c7, c8, rep(2), shortcut=True, hidden_ratio=2, kernel_size=3)
        self.sppf = SPPF(c8, ch(1024), 5)
        self.out_channels = (c2, c4, c6, ch(1024))  # P2, P3, P4, P5

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        p2 = self.stage1(self.down1(self.stem(x)))  # (B, c2, H/4, W/4)
        p3 = self.stage2(self.down2(p2))  # (B, c4, H/8, W/8)
        p4 = self.stage3(self.down3(p3))  # (B, c6, H/16, W/16)
        p5 = self.sppf(self.stage4(self.down4(p4)))  # (B, c9, H/32, W/32)
        return p2, p3, p4, p5


class Neck(nn.Module):
    """Graph layers 10..38: HyperACE hub, FullPAD tunnels, top-down and bottom-up paths. Returns P2..P5."""

    def __init__(self, scale: ScaleConfig, backbone_channels: tuple[int, int, int, int]) -> None:
        super().__init__()
        ch, rep = scale.channels, scale.repeats
        b2, b3, b4, b5 = backbone_channels
        adjust = not scale.large
        h = ch(512)
        self.hyperace = HyperACE(
            b4, h, rep(2), scale.hyperedges, True, True, 0.5, 1.0, "both", channel_adjust=adjust
        )  # 10
        self.hyper_down = DownsampleConv(h, channel_adjust=adjust)  # 12
        h_down = 2 * h if adjust else h
        self.tunnel_p4_in = FullPADTunnel()  # 13
        self.tunnel_p3_in = FullPADTunnel()  # 14
        self.tunnel_p5_in = FullPADTunnel()  # 15
        t4 = ch(512)
        self.top_down_p4 = MCAFEM(b5 + b4, t4, rep(2), shortcut=False, hidden_ratio=2, kernel_size=3)  # 18
        self.tunnel_top_down_p4 = FullPADTunnel()  # 19
        t3 = ch(256)
        self.top_down_p3 = MCAFEM(t4 + b3, t3, rep(2), shortcut=False, hidden_ratio=2, kernel_size=3)  # 22
        self.lateral_p3 = Conv(h, ch(256), 1)  # 23
        self.tunnel_top_down_p3 = FullPADTunnel()  # 24
        o2 = ch(128)
        self.out_p2 = DSC3k2(t3 + b2, o2, rep(2), use_dsc3k=True)  # 27
        self.down_p2 = Conv(o2, ch(256), 3, 2)  # 28
        o3 = ch(256)
        self.out_p3 = MCAFEM(ch(256) + t3, o3, rep(2), shortcut=False, hidden_ratio=2, kernel_size=3)  # 30
        self.down_p3 = Conv(o3, ch(256), 3, 2)  # 31
        o4 = ch(512)
        self.out_p4 = MCAFEM(ch(256) + t4, o4, rep(2), shortcut=False, hidden_ratio=2, kernel_size=3)  # 33
        self.tunnel_out_p4 = FullPADTunnel()  # 34
        self.down_p4 = Conv(o4, ch(512), 3, 2)  # 35
        o5 = ch(1024)
        self.out_p5 = MCAFEM(ch(512) + b5, o5, rep(2), shortcut=False, hidden_ratio=2, kernel_size=3)  # 37
        self.tunnel_out_p5 = FullPADTunnel()  # 38
        if h_down != b5 or o5 != h_down:
            raise ValueError(f"P5 widths do not line up for FullPAD: backbone {b5}, hub {h_down}, output {o5}")
        self.out_channels = (o2, o3, o4, o5)

    def forward(self, p2: Tensor, p3: Tensor, p4: Tensor, p5: Tensor) -> list[Tensor]:
        hub = self.hyperace(p3, p4, p5)  # 10: (B, h, H/16, W/16)
        hub_up = _upsample(hub)  # 11: P3 grid
        hub_down = self.hyper_down(hub)  # 12: P5 grid
        p4_in = self.tunnel_p4_in(p4, hub)  # 13
        p3_in = self.tunnel_p3_in(p3, hub_up)  # 14
        p5_in = self.tunnel_p5_in(p5, hub_down)  # 15
        td4 = self.top_down_p4(torch.cat((_upsample(p5_in), p4_in), dim=1))  # 16-18: P4 grid
        td4_tunnel = self.tunnel_top_down_p4(td4, hub)  # 19
        td3 = self.top_down_p3(torch.cat((_upsample(td4), p3_in), dim=1))  # 20-22: P3 grid
        td3_tunnel = self.tunnel_top_down_p3(td3, self.lateral_p3(hub_up))  # 23-24
        out2 = self.out_p2(torch.cat((_upsample(td3), p2), dim=1))  # 25-27: P2 grid
        out3 = self.out_p3(torch.cat((self.down_p2(out2), td3_tunnel), dim=1))  # 28-30: P3 grid
        out4 = self.out_p4(torch.cat((self.down_p3(out3), td4_tunnel), dim=1))  # 31-33: P4 grid
        out4 = self.tunnel_out_p4(out4, hub)  # 34
        out5 = self.out_p5(torch.cat((self.down_p4(out4), p5_in), dim=1))  # 35-37: P5 grid
        out5 = self.tunnel_out_p5(out5, hub_down)  # 38
        return [out2, out3, out4, out5]


class MASENet(nn.Module):
    """MASENet detector returning raw head maps.

    `forward(x)` takes `(B, in_channels, H, W)` with H and W multiples of 32 and returns, in both train and eval
    mode, a list of four tensors for P2, P3, P4, P5 (strides 4, 8, 16, 32), each `(B, 4 * reg_max + nc, H / s,
    W / s)`: the first `4 * reg_max` channels are distance-bin logits (left, top, right, bottom; `reg_max` bins
    each), the last `nc` are class logits. Decoding is done outside the network (`model.ops.decode_levels`):
    anchors at cell centres (+0.5), softmax over the 16 bins and its expectation, ltrb distances times the
    stride -> xywh boxes, sigmoid class scores.
    """

    strides: tuple[int, int, int, int] = STRIDES
    reg_max: int = REG_MAX

    def __init__(self, scale: str = "n", nc: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}")
        if nc < 1 or in_channels < 1:
            raise ValueError(f"nc and in_channels must be positive, got nc={nc}, in_channels={in_channels}")
        self.scale = scale
        self.nc = nc
        self.in_channels = in_channels
        config = SCALES[scale]
        self.backbone = Backbone(config, in_channels)
        self.neck = Neck(config, self.backbone.out_channels)
        self.head = MASEMHead(nc, self.neck.out_channels, REG_MAX)
        self.initialize_biases()

    def initialize_biases(self) -> None:
        """Box logits 1.0, class logits log(5 / nc / (640 / stride)^2) (see `MASEMHead.initialize_biases`)."""
        self.head.initialize_biases()

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % 32 or x.shape[3] % 32:
            raise ValueError(f"input height and width must be multiples of 32, got {tuple(x.shape[2:])}")
        features = self.neck(*self.backbone(x))  # P2..P5
        return self.head(features)

    def graph_layers(self) -> dict[int, nn.Module]:
        """Modules by graph index of the specification (indices without parameters are absent)."""
        return {index: self.get_submodule(path) for index, path in GRAPH_LAYERS.items()}

    def gradcam_layers(self) -> list[nn.Module]:
        """Modules whose outputs are the high-resolution neck features P2 (graph layer 27) and P3 (layer 30)."""
        return [self.neck.out_p2, self.neck.out_p3]


def build_model(name: str = "masenet", scale: str = "n", nc: int = 3, in_channels: int = 3) -> MASENet:
    """Build a MASENet variant.

    `name` is "masenet" (the scale comes from `scale`) or a registered variant like "masenet-s", whose scale then
    takes precedence over `scale`. Unknown names or scales raise ValueError listing the choices.
    """
    key = name.lower()
    if key in VARIANTS:
        scale = VARIANTS[key]
    elif key != "masenet":
        raise ValueError(f"unknown model name {name!r}; choose one of {['masenet', *sorted(VARIANTS)]}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}")
    model = MASENet(scale=scale, nc=nc, in_channels=in_channels)
    logger.debug("built masenet-%s (nc=%d, in_channels=%d)", scale, nc, in_channels)
    return model
