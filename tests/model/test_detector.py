"""Detector on an in-memory random-init model, and the checkpoint format round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from model.checkpoint import (
    CheckpointMeta,
    default_weights_path,
    file_sha256,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from model.detector import Detector
from model.errors import CheckpointError
from model.fuse import fuse_batchnorm
from model.masenet import build_model
from model.ops import make_anchors


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(scale="n", nc=1).eval()


@pytest.fixture(scope="module")
def detector(model):
    return Detector(model=model, device="cpu", class_names=["target"], imgsz=128)


def _frames(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        frame = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
        y, x = rng.integers(8, height - 8), rng.integers(8, width - 8)
        frame[y - 3 : y + 3, x - 3 : x + 3] = 250
        frames.append(frame)
    return frames


def _assert_same_detections(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a["class_id"] == b["class_id"]
        assert a["box"] == pytest.approx(b["box"], abs=0.05)
        assert a["score"] == pytest.approx(b["score"], abs=2e-4)


def test_detection_schema_and_info(detector):
    (result,) = detector.detect(_frames(1, 96, 128), conf=0.0, max_det=7)
    assert len(result) == 7
    for detection in result:
        assert set(detection) == {"box", "score", "class_id", "class_name"}
        x1, y1, x2, y2 = detection["box"]
        assert 0 <= x1 <= x2 <= 128 and 0 <= y1 <= y2 <= 96
        assert all(round(value, 2) == value for value in detection["box"])
        assert round(detection["score"], 4) == detection["score"] and 0 <= detection["score"] <= 1
        assert (detection["class_id"], detection["class_name"]) == (0, "target")
    assert [d["score"] for d in result] == sorted((d["score"] for d in result), reverse=True)
    assert detector.info == {
        "name": "masenet-n",
        "scale": "n",
        "nc": 1,
        "class_names": ["target"],
        "imgsz": 128,
        "pixel_scale": None,
        "device": "cpu",
        "dtype": "float32",
        "runtime": "torch",
        "tta": "off",
        "weights_sha256": None,
    }


def test_batch_of_four_equals_four_single_frames(detector):
    frames = _frames(4, 96, 128, seed=1)
    batch, params = detector.prepare(detector.to_tensors(frames))
    assert batch.shape == (4, 3, 96, 128)
    decoded = detector.infer(batch)
    batched = detector.postprocess(decoded, params, conf=0.0, max_det=20)
    for index, frame in enumerate(frames):
        single_batch, _ = detector.prepare(detector.to_tensors([frame]))
        torch.testing.assert_close(detector.infer(single_batch)[0], decoded[index], atol=1e-4, rtol=1e-4)
        _assert_same_detections(detector.detect([frame], conf=0.0, max_det=20)[0], batched[index])


def test_mixed_sizes_depths_and_per_frame_thresholds(detector):
    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    frames = [_frames(1, 96, 128)[0], ramp, ramp[:, :, None].astype(np.uint8), np.zeros((64, 64), np.uint8)]
    results = detector.detect(frames, conf=[0.0, 0.0, 0.0, 1.0], max_det=[3, 4, 5, 6])
    assert [len(result) for result in results] == [3, 4, 5, 0]
    for result, frame in zip(results, frames, strict=True):
        height, width = frame.shape[:2]
        for detection in result:
            x1, y1, x2, y2 = detection["box"]
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
    assert detector.detect([]) == []


def _flipped_anchors(height: int, width: int, strides: tuple[int, ...], dims: tuple[int, ...]) -> torch.Tensor:
    """For each anchor of a (height, width) input, the index of the anchor where a flip along `dims` puts it."""
    points, anchor_strides = make_anchors([(height // s, width // s) for s in strides], strides)
    places = [(x * s, y * s) for (x, y), s in zip(points.tolist(), anchor_strides[:, 0].tolist(), strict=True)]
    index = {place: i for i, place in enumerate(places)}
    return torch.tensor([index[(width - x if 3 in dims else x, height - y if 2 in dims else y)] for x, y in places])


def test_mirror_averaging_gives_a_mirrored_frame_mirrored_predictions():
    plain, averaged = Detector(imgsz=128, tta="off"), Detector(imgsz=128, tta=True)  # shipped weights: scores vary
    assert (plain.info["tta"], averaged.info["tta"]) == ("off", "mirror")
    batch, _ = averaged.prepare(averaged.to_tensors(_frames(1, 96, 128, seed=3)))
    mirror = _flipped_anchors(96, 128, averaged.strides, (3,))
    decoded, flipped = plain.infer(batch)[0], plain.infer(batch.flip(3))[0][:, mirror]
    assert (decoded[4] - flipped[4]).abs().max() > 1e-3  # the network alone is not mirror-symmetric
    decoded, flipped = averaged.infer(batch)[0], averaged.infer(batch.flip(3))[0][:, mirror]
    assert decoded.shape == (5, mirror.numel())  # one prediction per frame, not two
    torch.testing.assert_close(flipped[4], decoded[4], atol=1e-5, rtol=0)  # same scores
    torch.testing.assert_close(128 - flipped[0], decoded[0], atol=1e-3, rtol=0)  # centre x reflected
    torch.testing.assert_close(flipped[1:4], decoded[1:4], atol=1e-3, rtol=0)  # y, width, height kept


@pytest.mark.parametrize("dims", [(2,), (3,), (2, 3)])
def test_flip_averaging_gives_a_flipped_frame_flipped_predictions(dims):
    mirror_only, averaged = Detector(imgsz=128, tta="mirror"), Detector(imgsz=128, tta="flips")
    assert averaged.info["tta"] == "flips" and len(averaged.views) == 4
    assert (averaged.frames_per_pass(8), mirror_only.frames_per_pass(8), averaged.frames_per_pass(3)) == (2, 4, 1)
    batch, _ = averaged.prepare(averaged.to_tensors(_frames(1, 96, 128, seed=5)))
    moved = _flipped_anchors(96, 128, averaged.strides, dims)
    if 2 in dims:  # mirror averaging alone is not symmetric up and down
        decoded, flipped = mirror_only.infer(batch)[0], mirror_only.infer(batch.flip(dims))[0][:, moved]
        assert (decoded[4] - flipped[4]).abs().max() > 1e-3
    decoded, flipped = averaged.infer(batch)[0], averaged.infer(batch.flip(dims))[0][:, moved]
    assert decoded.shape == (5, moved.numel())  # one prediction per frame, not four
    torch.testing.assert_close(flipped[4], decoded[4], atol=1e-5, rtol=0)  # same scores
    centre = flipped[:2].clone()
    if 3 in dims:
        centre[0] = 128 - centre[0]
    if 2 in dims:
        centre[1] = 96 - centre[1]
    torch.testing.assert_close(centre, decoded[:2], atol=1e-3, rtol=0)  # centre reflected along the flipped axes
    torch.testing.assert_close(flipped[2:4], decoded[2:4], atol=1e-3, rtol=0)  # width and height kept


def test_unknown_tta_mode_is_refused(model):
    with pytest.raises(ValueError, match="mirror, flips"):
        Detector(model=model, device="cpu", tta="rotations")


def test_detector_leaves_the_callers_model_unfused(model):
    Detector(model=model, device="cpu")
    assert any(isinstance(module, torch.nn.BatchNorm2d) for module in model.modules())
    with pytest.raises(ValueError):
        Detector(model=model, device="cpu", class_names=["a", "b"])


def test_checkpoint_round_trip(tmp_path, model, detector):
    provenance = {"command": "masenet train", "epochs": 1, "metrics": {"mAP50": 0.5}}
    path = save_checkpoint(
        tmp_path / "weights.safetensors", model, class_names=["target"], imgsz=96, provenance=provenance
    )
    assert path.stat().st_size < 14_000_000  # float16 tensors
    meta = read_metadata(path)
    assert meta == CheckpointMeta(
        scale="n", nc=1, in_channels=3, class_names=["target"], imgsz=96, provenance=provenance
    )
    loaded, loaded_meta = load_checkpoint(path)
    assert loaded_meta == meta and not loaded.training
    assert all(parameter.dtype == torch.float32 for parameter in loaded.parameters())
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        for expected, actual in zip(model(images), loaded(images), strict=True):
            torch.testing.assert_close(actual, expected, atol=0.05, rtol=0.02)

    from_file = Detector(checkpoint=path, device="cpu")
    assert from_file.class_names == ["target"] and from_file.imgsz == 96
    assert from_file.info["weights_sha256"] == file_sha256(path) and len(file_sha256(path)) == 64
    batch, _ = from_file.prepare(from_file.to_tensors(_frames(2, 96, 128, seed=3)))
    assert batch.shape == (2, 3, 96, 96)  # the checkpoint's imgsz (96) is the default: 128x96 -> 96x72, padded
    torch.testing.assert_close(from_file.infer(batch), detector.infer(batch), atol=0.05, rtol=0.01)


def test_checkpoint_carries_its_test_time_augmentation(tmp_path, model):
    path = save_checkpoint(tmp_path / "flips.safetensors", model, class_names=["target"], imgsz=64, tta="flips")
    assert read_metadata(path).tta == "flips"
    assert Detector(checkpoint=path, device="cpu").tta == "flips"  # unset: the checkpoint's
    assert Detector(checkpoint=path, device="cpu", tta="off").views == ((),)  # an explicit choice wins
    assert Detector(checkpoint=path, device="cpu", tta=True).tta == "mirror"
    with pytest.raises(CheckpointError, match="tta is 'spin'"):
        save_checkpoint(tmp_path / "bad.safetensors", model, class_names=["target"], imgsz=64, tta="spin")

    exact = save_checkpoint(tmp_path / "full.safetensors", model, class_names=["target"], imgsz=96, half=False)
    exact_model, _ = load_checkpoint(exact)
    for name, tensor in model.state_dict().items():
        assert torch.equal(exact_model.state_dict()[name], tensor), name


def test_checkpoint_pixel_scale_is_the_default_resize_rule(tmp_path, model):
    path = save_checkpoint(tmp_path / "scaled.safetensors", model, class_names=["target"], imgsz=96, pixel_scale=1.5)
    assert read_metadata(path).pixel_scale == 1.5
    detector = Detector(checkpoint=path, device="cpu")
    assert (detector.pixel_scale, detector.info["pixel_scale"], detector.imgsz) == (1.5, 1.5, 96)
    small, large = _frames(1, 40, 64, seed=3)[0], _frames(1, 128, 160, seed=4)[0]
    _, params = detector.prepare(detector.to_tensors([small, large]))
    assert [(item.resized_width, item.resized_height) for item in params] == [(96, 60), (240, 192)]
    _, (fixed,) = detector.prepare(detector.to_tensors([large]), imgsz=96)  # a fixed longer side overrides it
    assert (fixed.resized_width, fixed.resized_height) == (96, 77)
    _, (other,) = detector.prepare(detector.to_tensors([small]), pixel_scale=0.5)
    assert (other.resized_width, other.resized_height) == (32, 20)
    assert Detector(checkpoint=path, device="cpu", imgsz=128).info["pixel_scale"] is None  # imgsz fixes the size
    with pytest.raises(ValueError, match="not both"):
        detector.prepare(detector.to_tensors([small]), imgsz=96, pixel_scale=1.0)
    older = save_checkpoint(tmp_path / "older.safetensors", model, class_names=["target"], imgsz=96)
    assert Detector(checkpoint=older, device="cpu").resize_rule() == {"imgsz": 96, "pixel_scale": None}
    with pytest.raises(CheckpointError, match="pixel_scale is 0"):
        save_checkpoint(tmp_path / "bad.safetensors", model, class_names=["target"], imgsz=96, pixel_scale=0)


def test_test_time_augmentation_per_call_matches_a_detector_built_with_it(model):
    frames = _frames(2, 64, 96, seed=5)
    plain = Detector(model=model, device="cpu", class_names=["target"], imgsz=96)
    flips = Detector(model=model, device="cpu", class_names=["target"], imgsz=96, tta="flips")
    for per_call, built in zip(
        plain.detect(frames, conf=0.01, tta="flips"), flips.detect(frames, conf=0.01), strict=True
    ):
        _assert_same_detections(per_call, built)
    for per_call, built in zip(
        flips.detect(frames, conf=0.01, tta="off"), plain.detect(frames, conf=0.01), strict=True
    ):
        _assert_same_detections(per_call, built)
    assert (plain.frames_per_pass(8, "flips"), flips.frames_per_pass(8), flips.frames_per_pass(8, "off")) == (2, 2, 8)


def test_checkpoint_errors(tmp_path, model):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    with pytest.raises(CheckpointError):
        read_metadata(garbage)
    with pytest.raises(CheckpointError):
        load_checkpoint(garbage)

    good = save_checkpoint(tmp_path / "good.safetensors", model, class_names=["target"], imgsz=64)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(truncated)

    bare = tmp_path / "bare.safetensors"
    save_file({"weight": torch.zeros(2)}, str(bare))
    with pytest.raises(CheckpointError, match="metadata"):
        load_checkpoint(bare)

    # Metadata that claims three classes over tensors of a one-class model.
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    metadata = read_metadata(good).to_metadata()
    metadata.update(nc=json.dumps(3), class_names=json.dumps(["a", "b", "c"]))
    mismatched = tmp_path / "mismatched.safetensors"
    save_file(state, str(mismatched), metadata=metadata)
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(mismatched)
    broken_keys = (("nc", "three"), ("architecture", json.dumps("yolo")), ("class_names", json.dumps(["a", "b"])))
    for key, text in (*broken_keys, ("tta", json.dumps("spin"))):
        broken = tmp_path / f"broken-{key}.safetensors"
        save_file({"weight": torch.zeros(2)}, str(broken), metadata={**read_metadata(good).to_metadata(), key: text})
        with pytest.raises(CheckpointError):
            read_metadata(broken)

    with pytest.raises(CheckpointError):
        save_checkpoint(tmp_path / "names.safetensors", model, class_names=["a", "b"], imgsz=64)
    fused = fuse_batchnorm(build_model(scale="n", nc=1).eval())
    with pytest.raises(CheckpointError, match="unfused"):
        save_checkpoint(tmp_path / "fused.safetensors", fused, class_names=["target"], imgsz=64)


def test_default_weights_path():
    path = default_weights_path()
    assert path.name == "masenet-n-synthetic.safetensors" and path.parent.name == "weights"
