"""MASENet structure: parameter counts from the specification, output contract, every variant trains."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from model.fuse import fuse_batchnorm
from model.masenet import GRAPH_LAYERS, SCALES, VARIANTS, MASENet, build_model

# From shared/design/masenet-architecture.md (nc = 3, 3 input channels; includes the 16 DFL projection weights).
SPEC_PARAMS = {"n": 6_281_283, "s": 24_035_603, "l": 65_407_283, "x": 148_331_283}
SPEC_PARAMS_N_NC80 = 6_354_231
SPEC_LAYER_PARAMS_N = {
    0: 464,
    1: 2368,
    2: 55528,
    3: 9344,
    4: 296568,
    5: 17792,
    6: 313656,
    7: 34432,
    8: 909336,
    9: 164608,
    10: 273536,
    12: 33280,
    13: 1,
    14: 1,
    15: 1,
    19: 1,
    24: 1,
    34: 1,
    38: 1,
    18: 299832,
    22: 86664,
    23: 8320,
    27: 9888,
    28: 18560,
    30: 68872,
    31: 36992,
    33: 248568,
    35: 147712,
    37: 976280,
    39: 2268676,
}
SPEC_GFLOPS_N = 24.35


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_model(scale: str, nc: int = 3) -> MASENet:
    """Build on the meta device: shapes and counts without allocating the weights."""
    with torch.device("meta"):
        return build_model(scale=scale, nc=nc)


@pytest.fixture(scope="module")
def model_n() -> MASENet:
    torch.manual_seed(0)
    return build_model("masenet-n")


@pytest.mark.parametrize("scale", sorted(SPEC_PARAMS))
def test_parameter_count_matches_spec(scale: str) -> None:
    assert count_parameters(meta_model(scale)) == SPEC_PARAMS[scale]


def test_parameter_count_nc80() -> None:
    assert count_parameters(meta_model("n", nc=80)) == SPEC_PARAMS_N_NC80


def test_per_layer_parameter_counts_n(model_n: MASENet) -> None:
    layers = model_n.graph_layers()
    counts = {index: count_parameters(layers[index]) for index in SPEC_LAYER_PARAMS_N}
    assert counts == SPEC_LAYER_PARAMS_N
    # the graph table covers every parameter of the model exactly once
    assert sum(count_parameters(module) for module in layers.values()) == SPEC_PARAMS["n"]
    assert set(GRAPH_LAYERS) == set(SPEC_LAYER_PARAMS_N)


def test_dfl_projection_is_frozen_and_counted(model_n: MASENet) -> None:
    bins = model_n.head.dfl_bins
    assert not bins.requires_grad
    assert torch.equal(bins, torch.arange(16, dtype=torch.float32))


def test_contract_attributes(model_n: MASENet) -> None:
    assert model_n.nc == 3
    assert model_n.in_channels == 3
    assert model_n.scale == "n"
    assert model_n.strides == (4, 8, 16, 32)
    assert model_n.reg_max == 16


@pytest.mark.parametrize("training", [True, False])
def test_forward_shapes(model_n: MASENet, training: bool) -> None:
    model_n.train(training)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        levels = model_n(x)
    assert isinstance(levels, list)
    assert [tuple(level.shape) for level in levels] == [(2, 64 + 3, 64 // s, 96 // s) for s in (4, 8, 16, 32)]


def test_rejects_sizes_that_are_not_multiples_of_32(model_n: MASENet) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        model_n(torch.randn(1, 3, 64, 80))
    with pytest.raises(ValueError, match="expected input"):
        model_n(torch.randn(1, 1, 64, 64))


def test_bias_initialisation(model_n: MASENet) -> None:
    for box, cls, stride in zip(model_n.head.box_branches, model_n.head.cls_branches, model_n.strides, strict=True):
        assert torch.all(box.pred.bias == 1.0)
        expected = math.log(5 / 3 / (640 / stride) ** 2)
        assert torch.allclose(cls.pred.bias, torch.full((3,), expected))


def test_gradcam_layers_give_p2_and_p3(model_n: MASENet) -> None:
    layers = model_n.gradcam_layers()
    assert layers == [model_n.graph_layers()[27], model_n.graph_layers()[30]]
    shapes: list[tuple[int, ...]] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape))) for layer in layers]
    try:
        model_n.eval()
        with torch.no_grad():
            model_n(torch.randn(1, 3, 64, 64))
    finally:
        for hook in hooks:
            hook.remove()
    widths = model_n.neck.out_channels
    assert shapes == [(1, widths[0], 16, 16), (1, widths[1], 8, 8)]


def test_build_model_names() -> None:
    assert set(VARIANTS) == {"masenet-n", "masenet-s", "masenet-l", "masenet-x"}
    assert meta_model("s").scale == "s"
    with torch.device("meta"):
        assert build_model("masenet-l").scale == "l"
        assert build_model("MASENet", scale="x").scale == "x"
    with pytest.raises(ValueError, match="masenet-s"):
        build_model("yolov13")
    with pytest.raises(ValueError, match=r"\['l', 'n', 's', 'x'\]"):
        build_model(scale="m")
    assert sorted(SCALES) == ["l", "n", "s", "x"]


@pytest.mark.parametrize(
    "scale", ["n", "s", pytest.param("l", marks=pytest.mark.slow), pytest.param("x", marks=pytest.mark.slow)]
)
def test_forward_backward_every_variant(scale: str) -> None:
    torch.manual_seed(0)
    model = build_model(scale=scale).train()
    levels = model(torch.randn(1, 3, 64, 64))
    loss = sum(level.float().square().mean() for level in levels)
    loss.backward()
    assert all(torch.isfinite(level).all() for level in levels)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_single_channel_input() -> None:
    torch.manual_seed(0)
    model = build_model(scale="n", nc=1, in_channels=1)
    assert model.backbone.stem.conv.in_channels == 1
    levels = model(torch.randn(2, 1, 64, 64))
    assert [tuple(level.shape) for level in levels] == [(2, 65, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    sum(level.mean() for level in levels).backward()
    assert torch.isfinite(model.backbone.stem.conv.weight.grad).all()


def _randomise_batchnorm(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=generator) * 0.1)


def test_fuse_batchnorm_keeps_outputs() -> None:
    torch.manual_seed(0)
    model = build_model(scale="n").eval()
    _randomise_batchnorm(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        assert fuse_batchnorm(model) is model
        after = model(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for a, b in zip(before, after, strict=True):
        assert (a - b).abs().max().item() < 1e-4
    fuse_batchnorm(model)  # idempotent
    with torch.no_grad():
        again = model(x)
    assert all(torch.equal(a, b) for a, b in zip(after, again, strict=True))


def test_gflops_n_near_spec() -> None:
    """Counted on the meta device (shapes only): torch counts conv/matmul FLOPs, YOLO tools count 2 x MACs."""
    model = meta_model("n").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, 640, 640, device="meta"))
    gflops = counter.get_total_flops() / 1e9
    assert abs(gflops - SPEC_GFLOPS_N) / SPEC_GFLOPS_N < 0.10, gflops
