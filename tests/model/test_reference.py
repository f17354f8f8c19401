"""Equivalence with the published implementation: converter and numerical outputs on the reference fixture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from model.convert import convert_reference_state_dict, published_key
from model.errors import ConversionError
from model.fuse import fuse_batchnorm
from model.masenet import MASENet, build_model

TOLERANCE = 1e-4


def published_state_dict(model: MASENet) -> dict[str, torch.Tensor]:
    """Our model's weights under the published names (the inverse of the converter)."""
    state = {}
    for key, value in model.state_dict().items():
        name = published_key(model, key)
        state[name] = value.reshape(1, -1, 1, 1) if key.endswith("dfl_bins") else value
    return state


@pytest.fixture(scope="module")
def random_published() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return published_state_dict(build_model(scale="n"))


@pytest.fixture(scope="module")
def reference(reference_fixture_path: Path) -> dict[str, Any]:
    return torch.load(reference_fixture_path, weights_only=True)


@pytest.fixture(scope="module")
def reference_model(reference: dict[str, Any]) -> MASENet:
    converted = convert_reference_state_dict(reference["state_dict"], scale=reference["scale"])
    model = build_model(scale=reference["scale"], nc=reference["nc"], in_channels=reference["in_channels"])
    model.load_state_dict(converted, strict=True)
    return model.float().eval()


def max_abs_diffs(outputs: list[torch.Tensor], expected: list[torch.Tensor]) -> list[float]:
    assert [tuple(o.shape) for o in outputs] == [tuple(e.shape) for e in expected]
    return [(o - e.float()).abs().max().item() for o, e in zip(outputs, expected, strict=True)]


def test_published_names_follow_the_reference_layout(random_published: dict[str, torch.Tensor]) -> None:
    assert "model.2.residual_adjust.4.running_var" in random_published
    assert "model.10.branch1.m.hgnn.edge_proj.0.weight" in random_published
    assert "model.39.l3_fusion.compress_level_1.conv.weight" in random_published
    assert "model.39.l0_fusion.stride_level_1.conv.weight" in random_published
    assert random_published["model.39.dfl.conv.weight"].shape == (1, 16, 1, 1)


def test_round_trip_through_published_names(random_published: dict[str, torch.Tensor]) -> None:
    converted = convert_reference_state_dict(random_published, scale="n")
    model = build_model(scale="n")
    model.load_state_dict(converted, strict=True)
    names = {published_key(model, key) for key in converted}
    assert names == set(random_published)
    assert len(converted) == len(random_published)


def test_unknown_key_is_named(random_published: dict[str, torch.Tensor]) -> None:
    state = dict(random_published)
    state["model.2.attention.extra.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match=r"unknown key 'model\.2\.attention\.extra\.weight'"):
        convert_reference_state_dict(state, scale="n")


def test_missing_key_is_named(random_published: dict[str, torch.Tensor]) -> None:
    state = dict(random_published)
    del state["model.30.cv_block_2.1.bn.running_mean"]
    with pytest.raises(ConversionError, match=r"missing key 'model\.30\.cv_block_2\.1\.bn\.running_mean'"):
        convert_reference_state_dict(state, scale="n")


def test_shape_mismatch_is_named(random_published: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ConversionError, match=r"shape mismatch for 'model\.39\.cv3\.0\.2\.weight'"):
        convert_reference_state_dict(random_published, scale="n", nc=5)
    with pytest.raises(ConversionError, match="shape mismatch"):
        convert_reference_state_dict(random_published, scale="s")
    with pytest.raises(ConversionError, match="unknown scale"):
        convert_reference_state_dict(random_published, scale="m")


def test_reference_converts_strictly(reference: dict[str, Any], reference_model: MASENet) -> None:
    assert reference["scale"] == "n" and reference["nc"] == 3
    assert torch.equal(reference_model.head.dfl_bins, torch.arange(16, dtype=torch.float32))
    expected = reference["state_dict"]["model.13.gate"].float()
    assert torch.equal(reference_model.neck.tunnel_p4_in.gate.detach(), expected)


def test_reference_outputs_match(reference: dict[str, Any], reference_model: MASENet) -> None:
    with torch.no_grad():
        outputs = reference_model(reference["input"].float())
    diffs = max_abs_diffs(outputs, reference["raw_levels"])
    assert max(diffs) < TOLERANCE, diffs


def test_reference_outputs_match_after_fusing(reference: dict[str, Any], reference_model: MASENet) -> None:
    fused = build_model(scale="n", nc=reference["nc"])
    fused.load_state_dict(reference_model.state_dict(), strict=True)
    fuse_batchnorm(fused.eval())
    with torch.no_grad():
        outputs = fused(reference["input"].float())
    diffs = max_abs_diffs(outputs, reference["raw_levels"])
    assert max(diffs) < TOLERANCE, diffs
