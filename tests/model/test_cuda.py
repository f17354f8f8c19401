"""The CUDA path of the shipped weights: same detections as on the CPU, half precision close to them, Grad-CAM.

Marked `gpu`: skipped where torch sees no CUDA device (tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.checkpoint import default_weights_path
from model.detector import Detector
from model.gradcam import gradcam

pytestmark = pytest.mark.gpu


def frames(count: int = 4, height: int = 512, width: int = 640) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    images = []
    for _ in range(count):
        image = rng.normal(60, 6, size=(height, width, 3)).clip(0, 255).astype(np.uint8)
        for _ in range(3):
            y, x = rng.integers(16, height - 16), rng.integers(16, width - 16)
            image[y - 2 : y + 2, x - 2 : x + 2] = 220
        images.append(image)
    return images


def matched(first: list[dict], second: list[dict], box_px: float, score: float) -> None:
    assert len(first) == len(second)
    for a, b in zip(sorted(first, key=lambda d: d["box"]), sorted(second, key=lambda d: d["box"]), strict=True):
        assert a["box"] == pytest.approx(b["box"], abs=box_px)
        assert a["score"] == pytest.approx(b["score"], abs=score)


@pytest.fixture(scope="module")
def on_cpu() -> Detector:
    return Detector(default_weights_path(), device="cpu", runtime="torch")


def test_cuda_float32_matches_the_cpu(on_cpu: Detector) -> None:
    on_gpu = Detector(default_weights_path(), device="cuda", half=False)
    assert on_gpu.device.type == "cuda"
    images = frames()
    for cpu, gpu in zip(on_cpu.detect(images, conf=0.25), on_gpu.detect(images, conf=0.25), strict=True):
        matched(cpu, gpu, box_px=0.1, score=1e-3)


def test_cuda_half_precision_stays_close(on_cpu: Detector) -> None:
    half = Detector(default_weights_path(), device="cuda", half=True)
    images = frames()
    cpu = on_cpu.detect(images, conf=0.4)
    gpu = half.detect(images, conf=0.4)
    found = sum(len(result) for result in cpu)
    assert abs(found - sum(len(result) for result in gpu)) <= max(1, found // 10)  # thresholds may flip a box


def test_cuda_batch_of_flipped_views_and_gradcam_fit(on_cpu: Detector) -> None:
    on_gpu = Detector(default_weights_path(), device="cuda", half=False)
    torch.cuda.reset_peak_memory_stats()
    detections, overlays = gradcam(
        on_gpu,
        frames(2),
        conf=[0.25, 0.25],
        iou=[0.45, 0.45],
        max_det=[300, 300],
        imgsz=None,
        pixel_scale=None,
        tta="flips",
    )
    assert len(detections) == len(overlays) == 2
    assert overlays[0].shape[:2] == (512, 640)
    assert torch.cuda.max_memory_allocated() < 8 * 2**30
