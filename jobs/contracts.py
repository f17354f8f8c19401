"""The job contract shared by the API and the workers (pydantic only, no torch).

An image job travels as JSON inside an rq job (rq's JSON serializer, never pickle); the image bytes sit
raw in Redis under `data_key` with a TTL. The worker completes the job through rq (result or failure,
registries) and also pushes a `ReplyMessage` onto the request's reply list, which the API waits on with
BLPOP. Workers announce themselves under `<prefix>:workers:<name>` with a `WorkerState`.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The rq function path of every MASENet job; the BatchingWorker dispatches on `payload.kind` instead of calling it.
JOB_FUNCTION = "worker.runtime.run_job"


class JobKind(str, Enum):
    """What a job asks for; the worker routes each kind to its source (worker/worker.py)."""

    IMAGE = "image"
    VIDEO_CHUNK = "video_chunk"
    VIDEO_FINALIZE = "video_finalize"


class FailureKind(str, Enum):
    """Why a job failed: `media` is the client's data (HTTP 422), the rest are the service's (HTTP 500/504)."""

    MEDIA = "media"
    INTERNAL = "internal"
    TIMEOUT = "timeout"


TtaMode = Literal["off", "mirror", "flips"]
TTA_VIEW_COUNTS: dict[str, int] = {"off": 1, "mirror": 2, "flips": 4}  # images per frame (model.ops.TTA_VIEWS)
MAX_PIXEL_SCALE = 8.0  # model.checkpoint.MAX_PIXEL_SCALE
NETWORK_STRIDE = 32  # every input side is padded to a multiple of the largest stride


IMGSZ_HELP = "resize every frame's longer side to this fixed size instead of by the pixel scale"
PIXEL_SCALE_HELP = "resize factor; default: MASENET_IMGSZ if set, else the pixel scale the model was trained at"
TTA_HELP = "test-time augmentation: off (one pass), mirror (2 views), flips (4 views); default: the worker's"


class InferenceParams(BaseModel):
    """How frames are run through the model; the one declaration of these bounds (API queries and jobs use it)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    conf: float = Field(0.25, ge=0.0, le=1.0, description="score threshold")
    iou: float = Field(0.45, ge=0.0, le=1.0, description="NMS IoU threshold")
    max_det: int = Field(300, ge=1, le=1000, description="most boxes per frame")
    imgsz: int | None = Field(None, ge=32, le=2048, multiple_of=32, description=IMGSZ_HELP)
    pixel_scale: float | None = Field(None, gt=0.0, le=MAX_PIXEL_SCALE, description=PIXEL_SCALE_HELP)
    tta: TtaMode | None = Field(None, description=TTA_HELP)


class DetectParams(InferenceParams):
    """Per-image parameters (the query of POST /detect), already validated by the API."""

    gradcam: bool = Field(False, description="also return a Grad-CAM overlay PNG per image")
    preview: bool = Field(
        False,
        description="also return each frame as the model saw it (8-bit, tone-mapped) as a base64 JPEG: what a "
        "browser can show of a 16-bit or TIFF frame",
    )


def input_pixels(width: int, height: int, scale: float) -> int:
    """Pixels of the network input that a width x height frame fills when resized by `scale` and stride-padded."""

    def side(length: int) -> int:
        return math.ceil(max(1, round(length * scale)) / NETWORK_STRIDE) * NETWORK_STRIDE

    return side(width) * side(height)


class ImageJobPayload(BaseModel):
    """Everything a worker needs for one image, as JSON (the bytes stay under `data_key`)."""

    kind: Literal[JobKind.IMAGE] = JobKind.IMAGE
    request_id: str
    index: int = Field(ge=0, description="position of the image in its request")
    filename: str
    data_key: str
    reply_key: str
    params: DetectParams
    enqueued_at: float = Field(description="unix time the API enqueued the job")
    deadline: float = Field(description="unix time after which the API no longer waits; the worker then skips it")


class Detection(BaseModel):
    """One box in original image pixels."""

    box: list[float] = Field(min_length=4, max_length=4, description="[x1, y1, x2, y2] in input pixels")
    score: float
    class_id: int
    class_name: str


class ModelInfo(BaseModel):
    """The model a worker serves."""

    model_config = ConfigDict(protected_namespaces=())

    name: str = "masenet"
    scale: str = ""
    nc: int = 0
    class_names: list[str] = Field(default_factory=list)
    imgsz: int = Field(640, description="the longer side frames are resized to when pixel_scale is null")
    pixel_scale: float | None = Field(
        None,
        description="frames are resized by this factor by default (the scale the network trained at); "
        "null: the checkpoint has none, and the longer side is resized to imgsz",
    )
    device: str = ""
    dtype: str = ""
    runtime: str = Field("torch", description="where the forward pass runs: torch, openvino or onnxruntime")
    tta: str = Field("off", description="default test-time augmentation: off, mirror or flips")
    weights_sha256: str = ""


class ImageJobResult(BaseModel):
    """What the worker returns for one image."""

    filename: str
    width: int
    height: int
    detections: list[Detection]
    gradcam: str | None = Field(None, description="base64 PNG overlay, same size as the input, when asked")
    preview: str | None = Field(None, description="base64 JPEG of the frame as the model saw it, when asked")
    queue_ms: float = Field(description="enqueue to pick-up by a worker")
    inference_ms: float = Field(description="decode to postprocess for the batch that held this image")
    batch_size: int = Field(description="images in the forward pass that held this image")
    worker: str = ""


class JobFailure(BaseModel):
    """Why one job failed."""

    kind: FailureKind
    detail: str


class ReplyMessage(BaseModel):
    """Pushed by the worker onto the request's reply list, once per job."""

    model_config = ConfigDict(protected_namespaces=())

    job_id: str
    index: int
    result: ImageJobResult | None = None
    failure: JobFailure | None = None
    model: ModelInfo | None = None


class WorkerStatus(str, Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class WorkerState(BaseModel):
    """A worker's heartbeat record under `<prefix>:workers:<name>` (the key expires unless refreshed)."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    status: WorkerStatus
    model: ModelInfo | None = None
    error: str | None = None
    hostname: str = ""
    pid: int = 0
    metrics_port: int | None = None
    max_batch: int = 0
    max_delay_ms: float = 0.0
    queues: list[str] = Field(default_factory=list)
    started_at: float = 0.0
    updated_at: float = 0.0


GRADCAM_COST = 11  # memory per input pixel of Grad-CAM over a plain forward pass (2,150 bytes against 205, CPU, fp32)


def frame_cost(width: int, height: int, params: InferenceParams, model: ModelInfo) -> tuple[int, float, int]:
    """(cost, resize factor, views) of one frame served with `params` by `model`.

    The cost is the network-input pixels the frame fills times its test-time views, times GRADCAM_COST when it
    asks for Grad-CAM (activations and gradients are kept for the backward pass): a measure of the memory its
    pass needs. The request's imgsz or pixel_scale, else the model's pixel scale, else its imgsz decide the
    factor; the request's tta, else the model's, the views. `MASENET_MAX_INPUT_PIXELS` bounds the cost.
    """
    if params.imgsz is not None:
        factor = params.imgsz / max(width, height)
    elif params.pixel_scale is not None or model.pixel_scale is not None:
        factor = params.pixel_scale or model.pixel_scale
    else:
        factor = model.imgsz / max(width, height)
    views = TTA_VIEW_COUNTS[params.tta or model.tta]
    return input_pixels(width, height, factor) * views * gradcam_weight(params), factor, views


def gradcam_weight(params: InferenceParams) -> int:
    return GRADCAM_COST if isinstance(params, DetectParams) and params.gradcam else 1


def over_input_budget(
    what: str, width: int, height: int, params: InferenceParams, model: ModelInfo, budget: int
) -> str:
    """Why a frame (`what`: "image 'name'", "the video's frames") is over the input-pixel budget, or "" if it fits."""
    cost, factor, views = frame_cost(width, height, params, model)
    if cost <= budget:
        return ""
    weight = gradcam_weight(params)
    largest = math.sqrt(budget / views / weight / (width * height)) * 0.98
    gradcam = f", Grad-CAM counted {weight} times (its activations and gradients)" if weight > 1 else ""
    return (
        f"{what} ({width}x{height}) resized by {factor:.3g} with {views} test-time view(s){gradcam} would cost {cost} "
        f"network-input pixels, above the limit of {budget} (MASENET_MAX_INPUT_PIXELS): ask for fewer pixels with "
        f"pixel_scale={largest:.2f} or less, an imgsz, or tta=off" + (", or gradcam=false" if weight > 1 else "")
    )
