"""The inference steps of a worker: load once, decode, batch, predict, unbatch.

    setup    load the Detector once per process (device, half, compile from the settings), warm it up
    decode   (thread pool) fetch the bytes from Redis, decode at native depth, tone-map to 8-bit RGB, copy
             to the device as uint8: runs while the previous batch is on the device
    predict  group the batch by resize rule and test-time views; one letterbox + forward + NMS per group;
             Grad-CAM (one backward) for the images that asked
    unbatch  one `Outcome` per task, in order; a failing image fails only itself

If a whole group fails, its images are retried one by one so that only the culprit fails.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from jobs.contracts import (
    Detection,
    DetectParams,
    FailureKind,
    ImageJobPayload,
    ImageJobResult,
    JobFailure,
    ModelInfo,
    frame_cost,
    over_input_budget,
)
from jobs.settings import Settings
from model.imaging import ImageDecodeError, decode_image, to_rgb8
from worker.batching import group_positions, pair_outputs, split_by_cost
from worker.metrics import WorkerMetrics

logger = logging.getLogger(__name__)

WARMUP_SIZE = 64
CPU_WAIT_POLICY = "PASSIVE"


def prefer_passive_cpu_threads() -> None:
    """Make idle OpenMP threads sleep instead of spin, unless OMP_WAIT_POLICY is already set.

    A worker shares its cores with the API, Redis and decoding threads. Spinning OpenMP threads then keep
    the thread they wait for off the CPU, and a forward pass that takes 70 ms can stall for seconds. Must run
    before torch is imported (OpenMP reads the variable once).
    """
    if "torch" in sys.modules:
        logger.debug("torch already imported: OMP_WAIT_POLICY left as it is")
        return
    os.environ.setdefault("OMP_WAIT_POLICY", CPU_WAIT_POLICY)


class JobMediaError(Exception):
    """The client's image cannot be used (the job fails as `media`, HTTP 422)."""


@dataclass
class DecodedImage:
    """A frame ready for the model."""

    frame: np.ndarray  # (H, W, 3) uint8 RGB
    tensor: Any  # (3, H, W) uint8 on the device
    width: int
    height: int


class Task(Protocol):
    """What a forward pass needs of a piece of work: an image job, or a frame of a video chunk."""

    params: DetectParams
    decoded: Future[DecodedImage] | None
    failure: JobFailure | None
    picked_at: float

    @property
    def name(self) -> str: ...  # for messages: "image 'a.png'", "frame 12"

    @property
    def enqueued_at(self) -> float: ...


@dataclass
class ImageTask:
    """One image job inside the worker, from pick-up to completion."""

    job: Any  # rq.job.Job
    taken: Any  # jobs.rqueue.Taken: the job as this worker popped it (its queue, then its rq execution)
    payload: ImageJobPayload
    picked_at: float
    decoded: Future[DecodedImage] = field(default_factory=Future)
    failure: JobFailure | None = None  # set when the task failed before inference

    @property
    def params(self) -> DetectParams:
        return self.payload.params

    @property
    def name(self) -> str:
        return f"image {self.payload.filename!r}"

    @property
    def enqueued_at(self) -> float:
        return self.payload.enqueued_at


@dataclass
class FrameTask:
    """One frame of a video chunk in the same batching path as image jobs.

    The chunk's reader thread only decodes (`image`); the batching thread copies the frame to the device
    (`decoded`) right before its pass, so torch runs in one thread per chunk.
    """

    index: int  # position in the source video
    time_s: float
    params: DetectParams
    image: np.ndarray  # (H, W, 3) uint8 RGB
    picked_at: float
    enqueued_at: float
    decoded: Future[DecodedImage] = field(default_factory=Future)
    failure: JobFailure | None = None

    @property
    def name(self) -> str:
        return f"frame {self.index}"


@dataclass
class Outcome:
    result: ImageJobResult | None = None
    failure: JobFailure | None = None


@dataclass
class _Ready:
    """A decoded task waiting for its forward pass."""

    position: int
    task: Task
    image: DecodedImage
    detections: list[dict] = field(default_factory=list)
    overlay_png: bytes | None = None


class InferenceRuntime:
    """The model and the per-image steps; one per worker process."""

    def __init__(self, settings: Settings, connection: Any, metrics: WorkerMetrics, worker_name: str = "") -> None:
        self.settings = settings
        self.connection = connection
        self.metrics = metrics
        self.worker_name = worker_name
        self.detector: Any = None
        self.model_info: ModelInfo | None = None

    # setup
    def load(self) -> ModelInfo:
        """Load the detector once (raises on failure) and run a small warm-up forward."""
        from model.detector import Detector

        started = time.perf_counter()
        detector = Detector(
            checkpoint=self.settings.weights,
            device=self.settings.device,
            half=self.settings.half,
            compile=self.settings.compile,
            imgsz=self.settings.imgsz,
            tta=self.settings.tta,
            runtime=self.settings.runtime,
        )
        self.detector = detector
        self.warm_up()
        self.metrics.model_load.set(time.perf_counter() - started)
        info = dict(detector.info)
        info["weights_sha256"] = info.get("weights_sha256") or ""
        self.model_info = ModelInfo.model_validate(info)
        return self.model_info

    def warm_up(self) -> None:
        """A small forward pass in this thread (a runtime may keep per-thread state, such as OpenVINO's)."""
        import torch

        with torch.inference_mode():
            self.detector.detect([np.zeros((WARMUP_SIZE, WARMUP_SIZE, 3), dtype=np.uint8)], imgsz=WARMUP_SIZE)

    def views(self, task: Task) -> int:
        """Images a task adds to a forward pass: its frame times its test-time views."""
        return len(self.detector.views_for(task.params.tta))

    def bucket(self, params: DetectParams, width: int, height: int) -> tuple:
        """Frames with the same bucket may share a forward pass: the same padded input shape, resize rule, views
        (defaults resolved) and Grad-CAM. A pass never pads one frame to another's shape."""
        from model.ops import padded_shape

        rule = self.detector.resize_rule(params.imgsz, params.pixel_scale)
        shape = padded_shape(height, width, stride=max(self.detector.strides), **rule)
        return shape, rule["imgsz"], rule["pixel_scale"], params.tta or self.detector.tta, params.gradcam

    def cost(self, params: DetectParams, width: int, height: int) -> int:
        """Network-input pixels of a frame, views and Grad-CAM counted (what MASENET_MAX_PASS_PIXELS bounds)."""
        assert self.model_info is not None
        return frame_cost(width, height, params, self.model_info)[0]

    @property
    def on_gpu(self) -> bool:
        return self.detector is not None and self.detector.device.type == "cuda"

    # decode (thread pool)
    def decode(self, payload: ImageJobPayload) -> DecodedImage:
        """Bytes from Redis to a uint8 tensor on the device; JobMediaError when the client's data is bad.

        The bytes stay in Redis until the job's reply is sent (worker.images.ImageSource._reply), so a job
        retried after this worker died can still be decoded by another.
        """
        started = time.perf_counter()
        data = self.connection.get(payload.data_key)
        if data is None:
            raise RuntimeError(f"the image bytes of {payload.filename!r} expired or were removed before decoding")
        try:
            frame = to_rgb8(decode_image(data, max_pixels=self.settings.max_pixels))
        except ImageDecodeError as exc:
            raise JobMediaError(str(exc)) from exc
        return self.upload(frame, started)

    def upload(self, frame: np.ndarray, started: float | None = None) -> DecodedImage:
        """An (H, W, 3) uint8 RGB frame copied to the device; observed as the decode stage since `started`."""
        started = time.perf_counter() if started is None else started
        tensor = self.detector.to_tensors([frame])[0]
        self.metrics.stage.labels(stage="decode").observe(time.perf_counter() - started)
        return DecodedImage(frame=frame, tensor=tensor, width=int(frame.shape[1]), height=int(frame.shape[0]))

    # predict + unbatch
    def run(self, tasks: Sequence[Task]) -> list[Outcome]:
        """One Outcome per task, in order. Never raises for a single bad image."""
        started = time.perf_counter()
        outcomes: list[Outcome | None] = [None] * len(tasks)
        ready: list[_Ready] = []
        for position, task in enumerate(tasks):
            if task.failure is not None:
                outcomes[position] = Outcome(failure=task.failure)
                continue
            try:
                assert task.decoded is not None
                image = task.decoded.result()
                problem = self._over_budget(task, image)
                if problem:
                    outcomes[position] = Outcome(failure=JobFailure(kind=FailureKind.MEDIA, detail=problem))
                    continue
                ready.append(_Ready(position, task, image))
            except JobMediaError as exc:
                outcomes[position] = Outcome(failure=JobFailure(kind=FailureKind.MEDIA, detail=str(exc)))
            except Exception as exc:
                logger.exception("decoding %s failed", task.name)
                outcomes[position] = Outcome(failure=internal_failure(exc))
        if ready:
            self.metrics.batch_size.observe(len(ready))
        plain = [item for item in ready if not item.task.params.gradcam]
        wanted = [item for item in ready if item.task.params.gradcam]
        failures = self._predict_groups(plain, self._detect_group) | self._predict_groups(wanted, self._gradcam_group)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        for item in ready:
            failure = failures.get(item.position)
            if failure is not None:
                outcomes[item.position] = Outcome(failure=failure)
            else:
                outcomes[item.position] = Outcome(result=self._result(item, elapsed_ms, len(ready)))
        self.metrics.images.inc(len(ready) - len(failures))
        return [outcome if outcome is not None else Outcome(failure=_missing()) for outcome in outcomes]

    def _over_budget(self, task: Task, image: DecodedImage) -> str:
        """The API checks this before queueing when a worker is alive; work queued before that is checked here."""
        assert self.model_info is not None
        budget = self.settings.max_input_pixels
        return over_input_budget(task.name, image.width, image.height, task.params, self.model_info, budget)

    def _predict_groups(self, items: list[_Ready], step: Any) -> dict[int, JobFailure]:
        """Run `step` per resize rule and views, in passes of at most MASENET_MAX_PASS_PIXELS; on a pass failure
        retry its images alone. Failures by position."""
        failures: dict[int, JobFailure] = {}
        for positions in group_positions(items, self._bucket_of).values():
            group = [items[position] for position in positions]
            for part in split_by_cost(group, self._cost, self.settings.max_pass_pixels):
                failures.update(self._run_pass(part, step))
        return failures

    def _run_pass(self, group: list[_Ready], step: Any) -> dict[int, JobFailure]:
        try:
            step(group)
            return {}
        except Exception as exc:
            error = exc
        release_device_memory(error)
        if len(group) == 1:
            logger.error("%s failed in the model", group[0].task.name, exc_info=error)
            return {group[0].position: internal_failure(error)}
        logger.warning("a batch of %d failed (%s); retrying its images one by one", len(group), error)
        failures = {}
        for item in group:
            try:
                step([item])
            except Exception as exc:
                release_device_memory(exc)
                logger.error("%s failed in the model", item.task.name, exc_info=exc)
                failures[item.position] = internal_failure(exc)
        return failures

    def _bucket_of(self, item: _Ready) -> tuple:
        return self.bucket(item.task.params, item.image.width, item.image.height)

    def _cost(self, item: _Ready) -> int:
        return self.cost(item.task.params, item.image.width, item.image.height)

    def _detect_group(self, group: list[_Ready]) -> None:
        """Letterbox on the device, one forward, NMS with each image's own thresholds."""
        detector = self.detector
        params = [item.task.params for item in group]
        tick = time.perf_counter()
        batch, letterbox = detector.prepare(
            [item.image.tensor for item in group], params[0].imgsz, params[0].pixel_scale
        )
        self._observe("preprocess", tick)
        tick = time.perf_counter()
        decoded = detector.infer(batch, params[0].tta)
        self._observe("inference", tick)
        tick = time.perf_counter()
        detections = detector.postprocess(
            decoded,
            letterbox,
            conf=[param.conf for param in params],
            iou=[param.iou for param in params],
            max_det=[param.max_det for param in params],
        )
        self._observe("postprocess", tick)
        for item, found in pair_outputs(group, detections, "postprocess"):
            item.detections = found

    def _gradcam_group(self, group: list[_Ready]) -> None:
        """Detections and overlays with one backward for the group."""
        from model.gradcam import encode_png, gradcam

        params = [item.task.params for item in group]
        tick = time.perf_counter()
        detections, overlays = gradcam(
            self.detector,
            [item.image.frame for item in group],
            conf=[param.conf for param in params],
            iou=[param.iou for param in params],
            max_det=[param.max_det for param in params],
            imgsz=params[0].imgsz,
            pixel_scale=params[0].pixel_scale,
            tta=params[0].tta,
        )
        for (item, found), overlay in zip(pair_outputs(group, detections, "gradcam"), overlays, strict=True):
            item.detections = found
            item.overlay_png = encode_png(overlay)
        self._observe("gradcam", tick)

    def _result(self, item: _Ready, elapsed_ms: float, batch_size: int) -> ImageJobResult:
        task = item.task
        overlay = base64.b64encode(item.overlay_png).decode("ascii") if item.overlay_png is not None else None
        preview = encode_jpeg(item.image.frame) if getattr(task.params, "preview", False) else None
        return ImageJobResult(
            filename=task.payload.filename if isinstance(task, ImageTask) else task.name,
            width=item.image.width,
            height=item.image.height,
            detections=[Detection.model_validate(detection) for detection in item.detections],
            gradcam=overlay,
            preview=preview,
            queue_ms=round(max(0.0, task.picked_at - task.enqueued_at) * 1000.0, 3),
            inference_ms=round(elapsed_ms, 3),
            batch_size=batch_size,
            worker=self.worker_name,
        )

    def _observe(self, stage: str, since: float) -> None:
        self.metrics.stage.labels(stage=stage).observe(time.perf_counter() - since)


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> str:
    """An RGB uint8 frame as a base64 JPEG (the preview of a frame as the model saw it)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def out_of_memory(exc: BaseException) -> bool:
    """A device (CUDA) or host allocation that failed: the job's own pass was too large, not a broken worker."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc)


def release_device_memory(exc: BaseException) -> None:
    """After an out-of-memory error, hand the CUDA cache back so that the retries and the next batch fit."""
    if out_of_memory(exc) and "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def internal_failure(exc: BaseException) -> JobFailure:
    if out_of_memory(exc):
        detail = (
            f"out of memory running this image ({type(exc).__name__}); send a smaller frame, fewer views or no Grad-CAM"
        )
        return JobFailure(kind=FailureKind.INTERNAL, detail=detail)
    return JobFailure(kind=FailureKind.INTERNAL, detail=f"{type(exc).__name__}: {exc}")


def _missing() -> JobFailure:
    return JobFailure(kind=FailureKind.INTERNAL, detail="the worker produced no outcome for this image")


def run_job(payload: dict) -> dict:
    """The rq function named by image jobs. Image jobs need the batching worker, which never calls this."""
    raise RuntimeError(
        "MASENet image jobs are batched: run them with `masenet worker` or "
        "`rq worker -w worker.worker.BatchingWorker <prefix>:images <prefix>:video`"
    )
