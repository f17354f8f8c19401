"""InferenceRuntime.run in-process on a tiny real model: grouping by input size, Grad-CAM for the images
that ask, and failure isolation (a bad image fails alone, never its batch)."""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image
from rq.job import Job
from rq.serializers import JSONSerializer

from jobs.contracts import JOB_FUNCTION, Detection, DetectParams, FailureKind, ImageJobPayload
from jobs.settings import Settings
from worker.metrics import WorkerMetrics
from worker.runtime import DecodedImage, ImageTask, InferenceRuntime, JobMediaError


@pytest.fixture(scope="module")
def runtime(tiny_checkpoint: Path, redis_client: redis.Redis) -> InferenceRuntime:
    settings = Settings(weights=tiny_checkpoint, device="cpu", imgsz=64, queue_prefix="runtime-test")
    runtime = InferenceRuntime(settings, redis_client, WorkerMetrics(), worker_name="in-process")
    runtime.load()
    return runtime


def make_task(
    runtime: InferenceRuntime,
    redis_client: redis.Redis,
    index: int,
    frame: np.ndarray | None,
    imgsz: int | None = 64,
    gradcam: bool = False,
    error: Exception | None = None,
    **params: object,
) -> ImageTask:
    payload = ImageJobPayload(
        request_id="r", index=index, filename=f"f{index}.png", data_key="unused", reply_key="unused",
        params=DetectParams(conf=0.0001, imgsz=imgsz, gradcam=gradcam, max_det=10, **params),
        enqueued_at=time.time() - 0.01, deadline=time.time() + 60,
    )  # fmt: skip
    job = Job.create(JOB_FUNCTION, kwargs={"payload": payload.model_dump(mode="json")}, connection=redis_client,
                     serializer=JSONSerializer)  # fmt: skip
    decoded: Future[DecodedImage] = Future()
    if error is not None:
        decoded.set_exception(error)
    else:
        assert frame is not None
        tensor = runtime.detector.to_tensors([frame])[0]
        decoded.set_result(DecodedImage(frame=frame, tensor=tensor, width=frame.shape[1], height=frame.shape[0]))
    return ImageTask(job=job, taken=None, payload=payload, picked_at=time.time(), decoded=decoded)


def count(runtime: InferenceRuntime, name: str, **labels: str) -> float:
    return runtime.metrics.registry.get_sample_value(name, labels) or 0.0


def frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def test_groups_by_input_size_and_runs_gradcam_only_where_asked(
    runtime: InferenceRuntime, redis_client: redis.Redis
) -> None:
    tasks = [
        make_task(runtime, redis_client, 0, frame(80, 48), imgsz=64),
        make_task(runtime, redis_client, 1, frame(64, 64), imgsz=96),
        make_task(runtime, redis_client, 2, frame(50, 70), imgsz=64),
        make_task(runtime, redis_client, 3, frame(72, 40), imgsz=64, gradcam=True),
    ]
    forwards = count(runtime, "masenet_stage_duration_seconds_count", stage="inference")
    backwards = count(runtime, "masenet_stage_duration_seconds_count", stage="gradcam")
    outcomes = runtime.run(tasks)
    assert count(runtime, "masenet_stage_duration_seconds_count", stage="inference") - forwards == 2  # 64 and 96
    assert count(runtime, "masenet_stage_duration_seconds_count", stage="gradcam") - backwards == 1
    assert [outcome.failure for outcome in outcomes] == [None] * 4
    results = [outcome.result for outcome in outcomes]
    assert [(r.filename, r.width, r.height) for r in results] == [
        ("f0.png", 80, 48), ("f1.png", 64, 64), ("f2.png", 50, 70), ("f3.png", 72, 40)
    ]  # fmt: skip
    assert all(r.batch_size == 4 and r.inference_ms > 0 and r.queue_ms >= 0 for r in results)
    assert [r.gradcam is not None for r in results] == [False, False, False, True]
    overlay = Image.open(io.BytesIO(base64.b64decode(results[3].gradcam)))
    assert overlay.size == (72, 40)
    for result in results:
        assert 0 < len(result.detections) <= 10
        for detection in result.detections:
            x1, y1, x2, y2 = detection.box
            assert 0 <= x1 <= x2 <= result.width and 0 <= y1 <= y2 <= result.height


def test_without_a_size_the_checkpoint_s_own_is_used(tiny_checkpoint: Path, redis_client: redis.Redis) -> None:
    """MASENET_IMGSZ unset: the worker serves at the size saved in the checkpoint (64 here), and so does a
    request that names no size, in the same forward as requests that name that size."""
    settings = Settings(weights=tiny_checkpoint, device="cpu", imgsz=None, queue_prefix="runtime-test")
    own = InferenceRuntime(settings, redis_client, WorkerMetrics(), worker_name="in-process")
    own.load()
    assert own.model_info.imgsz == 64
    image = frame(120, 80, seed=3)
    tasks = [make_task(own, redis_client, index, image, imgsz=size) for index, size in enumerate((None, 64, 128))]
    forwards = count(own, "masenet_stage_duration_seconds_count", stage="inference")
    default, at_64, at_128 = [outcome.result.detections for outcome in own.run(tasks)]
    assert default == at_64 and default != at_128
    assert count(own, "masenet_stage_duration_seconds_count", stage="inference") - forwards == 2  # None with 64


def test_mirror_averaging_setting_reaches_the_detector(
    runtime: InferenceRuntime, tiny_checkpoint: Path, redis_client: redis.Redis
) -> None:
    """MASENET_TTA=true: the worker serves what `Detector(tta=True)` computes and says so in its model info."""
    from model.detector import Detector

    settings = Settings(weights=tiny_checkpoint, device="cpu", imgsz=64, queue_prefix="runtime-test", tta=True)
    averaged = InferenceRuntime(settings, redis_client, WorkerMetrics(), worker_name="in-process")
    averaged.load()
    assert (averaged.model_info.tta, runtime.model_info.tta) == ("mirror", "off")
    image = frame(96, 64, seed=4)
    (outcome,) = averaged.run([make_task(averaged, redis_client, 0, image)])
    (expected,) = Detector(tiny_checkpoint, device="cpu", imgsz=64, tta=True).detect([image], conf=0.0001, max_det=10)
    assert [Detection.model_validate(d) for d in expected] == outcome.result.detections


def test_unset_tta_serves_the_checkpoints_own(tiny_checkpoint: Path, redis_client: redis.Redis, tmp_path: Path) -> None:
    """MASENET_TTA unset: the worker serves the test-time augmentation the weights were saved with."""
    from model.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(tiny_checkpoint)
    flips = save_checkpoint(tmp_path / "flips.safetensors", model, class_names=meta.class_names, imgsz=64, tta="flips")
    for tta, served in ((None, "flips"), ("off", "off")):
        settings = Settings(weights=flips, device="cpu", imgsz=64, queue_prefix="runtime-test", tta=tta)
        runtime = InferenceRuntime(settings, redis_client, WorkerMetrics(), worker_name="in-process")
        runtime.load()
        assert runtime.model_info.tta == served


def test_one_batch_mixes_views_and_resize_rules(runtime: InferenceRuntime, redis_client: redis.Redis) -> None:
    """Each task runs with its own tta and pixel scale, as the detector would run it alone; views weigh a task."""
    assert runtime.model_info.runtime == "openvino"  # the default (auto) on a CPU with the runtimes extra
    image = np.random.default_rng(7).integers(0, 255, size=(64, 96, 3), dtype=np.uint8)
    asked = [{"tta": "off"}, {"tta": "flips"}, {"imgsz": None, "pixel_scale": 0.5}, {"imgsz": None, "pixel_scale": 2.0}]
    tasks = [make_task(runtime, redis_client, index, image, **params) for index, params in enumerate(asked)]
    assert [runtime.views(task) for task in tasks] == [1, 4, 1, 1]
    assert len({runtime.bucket(task.payload.params, 96, 64) for task in tasks}) == 4
    outcomes = runtime.run(tasks)
    for params, outcome in zip(asked, outcomes, strict=True):
        alone = runtime.detector.detect([image], conf=0.0001, max_det=10, **{"imgsz": 64, **params})[0]
        assert outcome.failure is None and outcome.result.detections == [Detection.model_validate(d) for d in alone]


def test_a_frame_over_the_input_budget_fails_alone(runtime: InferenceRuntime, redis_client: redis.Redis) -> None:
    """Queued before the API knew the model's defaults, a frame that would not fit fails as media, not the batch."""
    image = np.zeros((64, 96, 3), dtype=np.uint8)
    tasks = [make_task(runtime, redis_client, 0, image), make_task(runtime, redis_client, 1, image, tta="flips")]
    settings = runtime.settings
    runtime.settings = settings.model_copy(update={"max_input_pixels": 2 * 64 * 64})
    try:
        fits, refused = runtime.run(tasks)
    finally:
        runtime.settings = settings
    assert fits.failure is None and fits.result is not None
    assert refused.failure.kind == FailureKind.MEDIA and "MASENET_MAX_INPUT_PIXELS" in refused.failure.detail


def test_a_bad_image_fails_alone(runtime: InferenceRuntime, redis_client: redis.Redis) -> None:
    broken = make_task(runtime, redis_client, 1, frame(64, 48))
    broken.decoded = Future()
    broken.decoded.set_result(  # a tensor the letterbox refuses: fails the group, then only itself
        DecodedImage(
            frame=frame(64, 48), tensor=runtime.detector.to_tensors([frame(64, 48)])[0][:1], width=64, height=48
        )  # fmt: skip
    )
    tasks = [
        make_task(runtime, redis_client, 0, frame(64, 48)),
        broken,
        make_task(runtime, redis_client, 2, None, error=JobMediaError("cannot decode image: truncated")),
        make_task(runtime, redis_client, 3, None, error=RuntimeError("bytes expired")),
        make_task(runtime, redis_client, 4, frame(48, 64, seed=2)),
    ]
    outcomes = runtime.run(tasks)
    assert outcomes[0].result is not None and outcomes[4].result is not None
    assert (
        outcomes[1].failure.kind == FailureKind.INTERNAL and "expected a (3, H, W) image" in outcomes[1].failure.detail
    )
    assert outcomes[2].failure.kind == FailureKind.MEDIA and "truncated" in outcomes[2].failure.detail
    assert outcomes[3].failure.kind == FailureKind.INTERNAL and "bytes expired" in outcomes[3].failure.detail


def test_decode_reads_the_bytes_and_keeps_them_for_a_retry(
    runtime: InferenceRuntime, redis_client: redis.Redis
) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((30, 40), 40000, np.uint16)).save(buffer, format="PNG")
    redis_client.set("runtime-test:data:x", buffer.getvalue())
    task = make_task(runtime, redis_client, 0, frame(8, 8))
    payload = task.payload.model_copy(update={"data_key": "runtime-test:data:x"})
    decoded = runtime.decode(payload)
    assert (decoded.width, decoded.height) == (40, 30)
    assert decoded.frame.dtype == np.uint8 and decoded.frame.shape == (30, 40, 3)
    assert redis_client.get("runtime-test:data:x") == buffer.getvalue()  # deleted with the reply, not before
    redis_client.set("runtime-test:data:x", b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(JobMediaError):
        runtime.decode(payload)
    redis_client.delete("runtime-test:data:x")
    with pytest.raises(RuntimeError, match="expired"):
        runtime.decode(payload)


def test_a_pass_is_split_to_fit_the_memory_budget_and_an_oom_fails_only_its_image(
    tiny_checkpoint: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MASENET_MAX_PASS_PIXELS of two 64x64 frames: four frames run as two passes. A pass that runs out of
    memory is retried image by image, and only the image that still does not fit fails, saying why."""
    settings = Settings(weights=tiny_checkpoint, device="cpu", imgsz=64, max_pass_pixels=2 * 64 * 64, queue_prefix="t")
    small = InferenceRuntime(settings, redis_client, WorkerMetrics(), worker_name="in-process")
    small.load()
    tasks = [make_task(small, redis_client, index, frame(64, 64, seed=index)) for index in range(4)]
    sizes: list[int] = []
    infer = small.detector.infer

    def recording(batch, tta=None):
        sizes.append(int(batch.shape[0]))
        if len(sizes) <= 2:  # the pass of two, then the first image alone
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return infer(batch, tta)

    def counting(batch, tta=None):
        sizes.append(int(batch.shape[0]))
        return infer(batch, tta)

    monkeypatch.setattr(small.detector, "infer", counting)
    assert all(outcome.result is not None for outcome in small.run(tasks))
    assert sizes == [2, 2]
    sizes.clear()
    monkeypatch.setattr(small.detector, "infer", recording)
    outcomes = small.run([make_task(small, redis_client, index, frame(64, 64, seed=index)) for index in range(2)])
    assert sizes == [2, 1, 1]  # the pass, then each image alone
    failed = [outcome.failure for outcome in outcomes if outcome.failure is not None]
    assert len(failed) == 1 and "out of memory" in failed[0].detail and "smaller frame" in failed[0].detail
    assert sum(outcome.result is not None for outcome in outcomes) == 1
