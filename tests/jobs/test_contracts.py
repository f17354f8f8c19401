"""The torch-free cost of a frame: resize factor, stride padding and test-time views, against the input budget."""

from __future__ import annotations

import pytest

from jobs.contracts import GRADCAM_COST, DetectParams, ModelInfo, frame_cost, input_pixels, over_input_budget

SHIPPED = ModelInfo(imgsz=960, pixel_scale=1.5, tta="off")
OLDER = ModelInfo(imgsz=960, pixel_scale=None, tta="flips")


@pytest.mark.parametrize(
    ("width", "height", "scale", "pixels"),
    [(320, 256, 1.5, 480 * 384), (640, 512, 1.5, 960 * 768), (1280, 1024, 1.5, 1920 * 1536), (1, 1, 1.5, 32 * 32)],
)
def test_input_pixels_are_resized_and_stride_padded(width: int, height: int, scale: float, pixels: int) -> None:
    assert input_pixels(width, height, scale) == pixels


def test_frame_cost_follows_the_request_then_the_model() -> None:
    assert frame_cost(320, 256, DetectParams(), SHIPPED) == (480 * 384, 1.5, 1)
    assert frame_cost(320, 256, DetectParams(tta="flips"), SHIPPED) == (4 * 480 * 384, 1.5, 4)
    assert frame_cost(320, 256, DetectParams(imgsz=960), SHIPPED) == (960 * 768, 3.0, 1)
    assert frame_cost(320, 256, DetectParams(pixel_scale=1.0), SHIPPED) == (320 * 256, 1.0, 1)
    assert frame_cost(320, 256, DetectParams(), OLDER) == (4 * 960 * 768, 3.0, 4)  # no pixel scale: imgsz


def test_over_input_budget_names_the_limit_and_what_to_change() -> None:
    assert over_input_budget("image 'a.png'", 1280, 1024, DetectParams(tta="flips"), SHIPPED, 12_000_000) == ""
    problem = over_input_budget("image 'b.png'", 3840, 2160, DetectParams(), SHIPPED, 12_000_000)
    assert "'b.png' (3840x2160)" in problem and "MASENET_MAX_INPUT_PIXELS" in problem
    largest = float(problem.split("pixel_scale=")[1].split(" ")[0])
    assert over_input_budget("image 'b.png'", 3840, 2160, DetectParams(pixel_scale=largest), SHIPPED, 12_000_000) == ""


def test_broker_reads_the_served_model_at_most_once_per_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from jobs.contracts import WorkerState, WorkerStatus
    from jobs.settings import Settings
    from service import queueing

    broker = queueing.JobBroker(Settings(queue_prefix="served-model-test"))
    reads: list[int] = []

    async def workers() -> list[WorkerState]:
        reads.append(1)
        return [WorkerState(name="w", status=WorkerStatus.READY, model=SHIPPED)]

    monkeypatch.setattr(broker, "workers", workers)
    clock = [100.0]
    monkeypatch.setattr(queueing.time, "monotonic", lambda: clock[0])
    assert asyncio.run(broker.served_model()) == SHIPPED
    clock[0] += queueing.SERVED_MODEL_TTL_S / 2
    assert asyncio.run(broker.served_model()) == SHIPPED and len(reads) == 1  # cached
    clock[0] += queueing.SERVED_MODEL_TTL_S
    assert asyncio.run(broker.served_model()) == SHIPPED and len(reads) == 2  # read again after the TTL


def test_gradcam_is_counted_at_its_memory_cost() -> None:
    plain = frame_cost(320, 256, DetectParams(), SHIPPED)[0]
    assert frame_cost(320, 256, DetectParams(gradcam=True), SHIPPED)[0] == GRADCAM_COST * plain
    # A 1x1 frame blown up to the largest imgsz with Grad-CAM: 2016 x 2016 x 11 = 44.7 million, refused.
    tiny = DetectParams(imgsz=2016, gradcam=True)
    problem = over_input_budget("image 'dot.png'", 1, 1, tiny, SHIPPED, 12_000_000)
    assert "Grad-CAM counted 11 times" in problem and "gradcam=false" in problem
    assert over_input_budget("image 'dot.png'", 1, 1, DetectParams(imgsz=2016), SHIPPED, 12_000_000) == ""
