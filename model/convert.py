"""Convert state dicts in the published implementation's naming (`model.<graph index>.<...>`) onto MASENet.

The mapping is derived from structure: `GRAPH_LAYERS` places each graph index on one of our modules, and a small
table per block type renames our child modules to the published ones. Walking our own state dict through those
tables gives, for every one of our keys, the published key it comes from; anything left over on either side is
an error. Children not named in a table (BatchNorm statistics, list indices, `conv`, `weight`) keep their names.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from model.errors import ConversionError
from model.head import BoxBranch, ClassBranch, MASEMHead
from model.hyperace import C3AH, AdaHGComputation, AdaHGConv, AdaHyperedgeGen, FuseModule, HyperACE
from model.layers import SPPF, Bottleneck, Conv, CSPSplit, CSPTwoPath, DownsampleConv, DSBottleneck, DSConv
from model.masem import FASFF, MASEM, MCAFEM, DepthwiseSeparableField, InvertedBranch, ResidualAdapter
from model.masenet import GRAPH_LAYERS, SCALES, MASENet

# Our child path -> published child path, per block type. Keys may span several levels ("depthwise.conv").
_CHILD_NAMES: dict[type[nn.Module], dict[str, str]] = {
    Conv: {"norm": "bn"},
    DSConv: {"depthwise": "dw", "pointwise": "pw", "norm": "bn"},
    Bottleneck: {"conv1": "cv1", "conv2": "cv2"},
    DSBottleneck: {"conv1": "cv1", "conv2": "cv2"},
    CSPTwoPath: {"main": "cv1", "skip": "cv2", "blocks": "m", "project": "cv3"},
    CSPSplit: {"stem": "cv1", "blocks": "m", "project": "cv2"},
    SPPF: {"reduce": "cv1", "project": "cv2"},
    DownsampleConv: {"expand": "channel_adjust"},
    AdaHyperedgeGen: {"prototypes": "prototype_base", "context_proj": "context_net", "token_proj": "pre_head_proj"},
    AdaHGConv: {"edge_proj": "edge_proj.0", "node_proj": "node_proj.0"},
    AdaHGComputation: {"hypergraph": "hgnn"},
    C3AH: {"main": "cv1", "skip": "cv2", "graph": "m", "project": "cv3"},
    FuseModule: {"project": "conv_out"},
    HyperACE: {"stem": "cv1", "project": "cv2", "low_order": "m", "high_order_a": "branch1", "high_order_b": "branch2"},
    DepthwiseSeparableField: {"depthwise": "0", "pointwise": "1"},
    MASEM: {
        "field1": "conv0",
        "field2": "conv_spatial",
        "squeeze1": "conv1",
        "squeeze2": "conv2",
        "gate_reduce": "reduce_conv",
        "gate_norm": "gn",
        "select1": "weight_conv1",
        "select2": "weight_conv2",
        "select_logits": "weights_conv",
        "spatial_conv": "conv_squeeze",
        "out_proj": "conv",
    },
    InvertedBranch: {"expand": "0", "depthwise": "1", "reduce": "2"},
    ResidualAdapter: {"depthwise.conv": "0", "depthwise.norm": "1", "pointwise.conv": "3", "pointwise.norm": "4"},
    MCAFEM: {
        "stem": "cv_first",
        "project": "cv_final",
        "blocks": "m",
        "pointwise_branch": "cv_block_1",
        "inverted_branch": "cv_block_2",
        "masem": "attention",
        "residual": "residual_adjust",
    },
    BoxBranch: {"conv1": "0", "conv2": "1", "pred": "2"},
    ClassBranch: {"dw1": "0.0", "pw1": "0.1", "dw2": "1.0", "pw2": "1.1", "pred": "2"},
    MASEMHead: {
        "masem": "sru_list",
        "box_branches": "cv2",
        "cls_branches": "cv3",
        "dfl_bins": "dfl.conv.weight",
        **{f"fusions.{i}": f"l{3 - i}_fusion" for i in range(4)},
    },
    MASENet: {path: f"model.{index}" for index, path in GRAPH_LAYERS.items()},
}

_MAX_PATH_DEPTH = 2  # longest key of the tables above, in dotted parts


def _fasff_names(fusion: FASFF) -> dict[str, str]:
    """Published names of one FASFF: strided resamplers are `stride_level_i`, 1x1 ones `compress_level_i`."""
    names = {"refine": "expand", "weight_logits": "weight_levels"}
    for i, resample in enumerate(fusion.resamplers):
        names[f"weight_convs.{i}"] = f"weight_level_{i}"
        if isinstance(resample.conv, Conv):
            names[f"resamplers.{i}.conv"] = f"{'stride' if resample.downsamples else 'compress'}_level_{i}"
    return names


def _child_names(module: nn.Module) -> dict[str, str]:
    if isinstance(module, FASFF):
        return _fasff_names(module)
    for block_type in type(module).__mro__:
        if block_type in _CHILD_NAMES:
            return _CHILD_NAMES[block_type]
    return {}


def published_key(model: nn.Module, key: str) -> str:
    """The published name of one of our state-dict keys (walks `model` along the key)."""
    parts = key.split(".")
    module: nn.Module | None = model
    published: list[str] = []
    index = 0
    while index < len(parts):
        table = _child_names(module) if module is not None else {}
        for depth in range(min(_MAX_PATH_DEPTH + 1, len(parts) - index), 0, -1):
            ours = ".".join(parts[index : index + depth])
            if ours in table:
                published.append(table[ours])
                break
        else:
            depth, ours = 1, parts[index]
            published.append(ours)
        index += depth
        if module is not None and index < len(parts):
            module = module.get_submodule(ours)
    return ".".join(published)


def _infer_nc(state_dict: Mapping[str, Tensor]) -> int:
    key = "model.39.cv3.0.2.bias"
    if key not in state_dict:
        raise ConversionError(f"missing key {key!r} (needed to infer the number of classes)")
    return int(state_dict[key].shape[0])


def _infer_in_channels(state_dict: Mapping[str, Tensor]) -> int:
    key = "model.0.conv.weight"
    if key not in state_dict:
        raise ConversionError(f"missing key {key!r}")
    return int(state_dict[key].shape[1])


def convert_reference_state_dict(
    state_dict: Mapping[str, Tensor], scale: str = "n", nc: int | None = None
) -> dict[str, Tensor]:
    """Map a published-naming state dict onto `MASENet(scale, nc)` keys (load the result with strict=True).

    `nc` and the input channels are read from the state dict when not given. Values keep their dtype (loading
    copies them into the model's dtype); the DFL projection `(1, 16, 1, 1)` becomes our `(16,)` frozen parameter.

    Raises ConversionError naming the first unknown key, the first missing key, or the first shape mismatch.
    """
    if scale not in SCALES:
        raise ConversionError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}")
    nc = _infer_nc(state_dict) if nc is None else nc
    in_channels = _infer_in_channels(state_dict)
    with torch.device("meta"):
        model = MASENet(scale=scale, nc=nc, in_channels=in_channels)
    ours = model.state_dict()
    sources = {key: published_key(model, key) for key in ours}
    expected = set(sources.values())
    for key in state_dict:
        if key not in expected:
            raise ConversionError(f"unknown key {key!r} in the reference state dict (scale {scale!r}, nc={nc})")
    converted: dict[str, Tensor] = {}
    for key, source in sources.items():
        if source not in state_dict:
            raise ConversionError(f"missing key {source!r} in the reference state dict (our {key!r})")
        value = state_dict[source]
        target_shape = ours[key].shape
        if value.shape != target_shape:
            if value.numel() == target_shape.numel() and key.endswith("dfl_bins"):
                value = value.reshape(target_shape)
            else:
                raise ConversionError(
                    f"shape mismatch for {source!r}: reference {tuple(value.shape)}, expected {tuple(target_shape)}"
                    f" (our {key!r}, scale {scale!r}, nc={nc})"
                )
        converted[key] = value
    return converted
