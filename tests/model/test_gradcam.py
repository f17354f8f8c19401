"""Grad-CAM overlays on an in-memory random-init model."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from model.detector import Detector
from model.gradcam import encode_png, gradcam, jet_lut
from model.masenet import build_model


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return Detector(model=build_model(scale="n", nc=1).eval(), device="cpu", class_names=["target"], imgsz=128)


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 80, size=(96, 128, 3), dtype=np.uint8)
    rgb[40:46, 60:66] = 255
    gray16 = (rng.integers(0, 4000, size=(64, 64)) + 1000).astype(np.uint16)
    return [rgb, gray16]


def test_overlays_match_frames_and_use_one_backward(detector):
    frames = _frames()
    backward_passes = []

    def count_backward(_module, _inputs, output):
        output.register_hook(lambda gradient: backward_passes.append(gradient.shape))

    layers = detector.float_module().gradcam_layers()
    handle = layers[0].register_forward_hook(count_backward)
    try:
        detections, overlays = gradcam(detector, frames, conf=[0.0, 1.0], max_det=5)
    finally:
        handle.remove()
    assert len(backward_passes) == 1  # one backward for the whole batch
    assert [len(result) for result in detections] == [5, 0]  # the second frame falls back to its best anchor
    assert detections[0][0]["class_name"] == "target"
    for frame, overlay in zip(frames, overlays, strict=True):
        assert overlay.shape == frame.shape[:2] + (3,) and overlay.dtype == np.uint8
    assert not np.array_equal(overlays[0], frames[0])
    plain = np.repeat(detector.to_tensors([frames[1]])[0].permute(1, 2, 0).numpy()[:, :, :1], 3, axis=2)
    assert np.abs(overlays[1].astype(int) - plain.astype(int)).max() > 10
    # Same detections as the inference path on the same batch (the fused model agrees to rounding).
    expected = detector.detect(frames, conf=[0.0, 1.0], max_det=5)
    assert [d["box"] for d in expected[0]] == [d["box"] for d in detections[0]]
    assert [d["score"] for d in expected[0]] == pytest.approx([d["score"] for d in detections[0]], abs=2e-4)


def test_gradcam_of_no_frames(detector):
    assert gradcam(detector, []) == ([], [])


def test_jet_lut_and_png():
    lut = jet_lut()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert lut[0].tolist() == [0, 0, 128] and lut[-1].tolist() == [128, 0, 0]  # dark blue to dark red
    array = np.zeros((5, 7, 3), dtype=np.uint8)
    array[2, 3] = (10, 20, 30)
    with Image.open(io.BytesIO(encode_png(array))) as image:
        assert image.format == "PNG" and np.array_equal(np.asarray(image), array)


def test_mirror_averaging_explains_its_own_detections_symmetrically():
    averaged = Detector(imgsz=128, tta=True)  # the shipped weights: no ties between scores
    frame = _frames()[0]
    mirror = np.ascontiguousarray(frame[:, ::-1])
    (found,), (overlay,) = gradcam(averaged, [frame], conf=0.0, max_det=5)
    assert [d["box"] for d in found] == [d["box"] for d in averaged.detect([frame], conf=0.0, max_det=5)[0]]
    _, (mirror_overlay,) = gradcam(averaged, [mirror], conf=0.0, max_det=5)
    assert not np.array_equal(overlay, frame)
    # The frame and its mirror are explained by the same averaged prediction, so the heat maps mirror too.
    assert np.abs(mirror_overlay[:, ::-1].astype(int) - overlay.astype(int)).max() <= 2


def test_flip_averaging_explains_an_upside_down_frame_upside_down():
    averaged = Detector(imgsz=128, tta="flips")
    frame = _frames()[0]
    (found,), (overlay,) = gradcam(averaged, [frame], conf=0.0, max_det=5)
    assert [d["box"] for d in found] == [d["box"] for d in averaged.detect([frame], conf=0.0, max_det=5)[0]]
    _, (flipped_overlay,) = gradcam(averaged, [np.ascontiguousarray(frame[::-1])], conf=0.0, max_det=5)
    assert np.abs(flipped_overlay[::-1].astype(int) - overlay.astype(int)).max() <= 2
