"""Response models of the HTTP API (typed so that /docs shows them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from jobs.contracts import Detection, ModelInfo, WorkerState


class ImageResult(BaseModel):
    filename: str
    width: int
    height: int
    detections: list[Detection]
    gradcam: str | None = Field(None, description="base64 PNG overlay of the input's size, or null")
    preview: str | None = Field(None, description="base64 JPEG of the frame as the model saw it (8-bit), or null")


class Timing(BaseModel):
    queue_ms: float = Field(description="longest wait of the request's images between enqueue and a worker")
    inference_ms: float = Field(description="longest worker processing time of the request's batches")
    total_ms: float = Field(description="time from receiving the request to answering it")


class DetectResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: ModelInfo
    results: list[ImageResult] = Field(description="one result per image, in request order")
    timing: Timing


class ErrorResponse(BaseModel):
    detail: str = Field(description="what went wrong and what to change")


class ServedModel(ModelInfo):
    workers: list[str] = Field(description="workers serving this model")


class ModelsResponse(BaseModel):
    models: list[ServedModel]


class HealthResponse(BaseModel):
    status: str


class QueueDepths(BaseModel):
    images: int = Field(description="image jobs waiting")
    video: int = Field(description="video chunk jobs waiting")


class StatusResponse(BaseModel):
    """What GET /status answers: the workers, the queues and the live streams, for consoles and operators."""

    workers: list[WorkerState] = Field(description="live workers' heartbeat records (loading, ready or failed)")
    queues: QueueDepths
    streams: dict[str, int] = Field(description="live streams kept, by status")


class ReadyResponse(BaseModel):
    status: str
    workers: list[str] = Field(description="workers with a loaded model")


ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        401: "missing or invalid bearer key (when MASENET_API_KEYS is set)",
        413: "upload, image count or pixel count above the limits",
        415: "not multipart/form-data, or an image format other than PNG, JPEG, TIFF, BMP",
        422: "out-of-range parameter, or an empty, multi-frame or corrupt image",
        429: "this API key is past its requests per minute or images in flight (see Retry-After)",
        500: "a worker failed on a job (the detail names the job id)",
        503: "queue full or Redis unreachable (see Retry-After)",
        504: "no result within MASENET_TIMEOUT_S",
    }.items()
}
