"""POST /detect: validate cheaply, enqueue one job per image, wait for the workers, answer in request order."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, TypeVar

import redis
from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from jobs.contracts import DetectParams, FailureKind, InferenceParams, ModelInfo, ReplyMessage, over_input_budget
from jobs.settings import Settings
from service.deps import BrokerDep, MetricsDep, QuotaDep, SettingsDep
from service.errors import (
    ClientGone,
    InvalidMedia,
    InvalidParameters,
    PixelLimitExceeded,
    ResultTimeout,
    WorkerFailure,
)
from service.metrics import ApiMetrics, safely
from service.queueing import ImageUpload, JobBroker, Submission, unavailable
from service.schemas import ERROR_RESPONSES, DetectResponse, ImageResult, Timing
from service.uploads import (
    IMAGE_FIELD,
    MultipartReader,
    UploadedFile,
    check_declared_length,
    inspect_image,
    multipart_boundary,
    select_images,
)

router = APIRouter(tags=["detection"])
ParamsT = TypeVar("ParamsT", bound=InferenceParams)
ROUTE = "/detect"
# What the parts are expected to hold; the service sniffs the bytes and ignores the part's own Content-Type.
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/tiff", "image/bmp")

MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [IMAGE_FIELD],
                    "additionalProperties": False,  # any other part is refused with 422
                    "properties": {
                        IMAGE_FIELD: {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or more PNG, JPEG, TIFF or BMP frames (8 or 16 bit)",
                        }
                    },
                },
                "encoding": {IMAGE_FIELD: {"contentType": ", ".join(IMAGE_MEDIA_TYPES)}},
            }
        },
    }
}


@router.post(
    ROUTE,
    response_model=DetectResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=MULTIPART_BODY,
    summary="Detect small targets in one or more infrared frames",
)
async def detect(
    request: Request,
    settings: SettingsDep,
    broker: BrokerDep,
    metrics: MetricsDep,
    quota: QuotaDep,
    query: Annotated[DetectParams, Query()],
) -> DetectResponse:
    started = time.perf_counter()
    params = resolve_size(settings, query)
    uploads = await read_uploads(request, settings, metrics)
    images = await run_in_threadpool(validate_images, uploads, settings)
    try:
        await check_input_budget(images, params, broker, settings)
        async with quota.images_in_flight(len(images)):
            await broker.check_capacity(len(images))
            submission = await run_in_threadpool(broker.enqueue, images, params)
            replies = await wait_unless_gone(request, broker, submission, metrics)
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from exc
    if len(replies) < len(images):
        await run_in_threadpool(broker.cancel, submission, set(replies))
        raise_for_failures(images, replies)  # a worker that died with the job answers 500 naming it
        missing = [job_id for index, job_id in enumerate(submission.job_ids) if index not in replies]
        named = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise ResultTimeout(
            f"no result within {settings.timeout_s:g} s (MASENET_TIMEOUT_S): {len(replies)} of {len(images)} images "
            f"answered and the rest were canceled (jobs {named}); "
            "check that workers are running (GET /readyz) and retry"
        )
    return build_response(images, submission, replies, started)


async def client_gone(request: Request) -> None:
    """Returns once the client has closed the connection (its body is read, so the next message is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        continue


async def wait_unless_gone(
    request: Request, broker: JobBroker, submission: Submission, metrics: ApiMetrics
) -> dict[int, ReplyMessage]:
    """The workers' replies; if the client leaves first, its queued images are canceled (workers skip them)."""
    waiting = asyncio.ensure_future(broker.wait(submission))
    leaving = asyncio.ensure_future(client_gone(request))
    try:
        await asyncio.wait({waiting, leaving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        unfinished = [task for task in (waiting, leaving) if not task.done()]
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)  # nothing runs on after this point
    if not waiting.cancelled():
        return waiting.result()  # the replies (or the Redis error, which the caller answers with 503)
    canceled = await run_in_threadpool(broker.cancel, submission, set())
    safely(lambda: metrics.abandoned_images.inc(len(canceled)))
    raise ClientGone(
        f"the client left before its {len(submission.job_ids)} image(s) were answered; {len(canceled)} still queued "
        "were canceled"
    )


def resolve_size(settings: Settings, params: ParamsT) -> ParamsT:
    """A request's parameters; without its own imgsz or pixel_scale, MASENET_IMGSZ (when set) fixes the size."""
    if params.imgsz is not None and params.pixel_scale is not None:
        raise InvalidParameters("give imgsz (a fixed longer side) or pixel_scale (a resize factor), not both")
    if params.imgsz is None and params.pixel_scale is None and settings.imgsz is not None:
        return params.model_copy(update={"imgsz": settings.imgsz})
    return params


async def check_input_budget(
    images: list[ImageUpload], params: DetectParams, broker: JobBroker, settings: Settings
) -> None:
    """413 before queueing when a frame would fill more network input than MASENET_MAX_INPUT_PIXELS.

    The model's defaults come from a live worker; with none alive yet the worker makes the same check.
    """
    model = await broker.served_model()
    if model is None:
        return
    for image in images:
        what = f"image {image.filename!r}"
        problem = over_input_budget(what, image.width, image.height, params, model, settings.max_input_pixels)
        if problem:
            raise PixelLimitExceeded(problem)


async def read_uploads(request: Request, settings: Settings, metrics: MetricsDep) -> list[UploadedFile]:
    """Stream the multipart body under the byte cap and return the image parts."""
    boundary = multipart_boundary(request.headers.get("content-type"))
    check_declared_length(request.headers.get("content-length"), settings.max_upload_bytes)
    reader = MultipartReader(boundary, settings.max_upload_bytes, settings.max_images_per_request)
    try:
        parsed = await reader.read(request.stream())
    finally:
        metrics.add_upload_bytes(ROUTE, reader.body_bytes)
    return select_images(parsed.files)


def validate_images(uploads: list[UploadedFile], settings: Settings) -> list[ImageUpload]:
    """Header-check every image (format, pixels, frames); the first problem answers the request."""
    images = []
    for position, upload in enumerate(uploads):
        filename = upload.filename or f"image-{position}"
        header = inspect_image(upload.data, filename, settings.max_pixels)
        images.append(ImageUpload(filename=filename, data=upload.data, width=header.width, height=header.height))
    return images


def raise_for_failures(images: list[ImageUpload], replies: dict[int, ReplyMessage]) -> None:
    """A worker failure answers 500 (internal, naming the job) or 422 (the image's data)."""
    failures = [(index, replies[index]) for index in sorted(replies) if replies[index].failure is not None]
    internal = [(index, reply) for index, reply in failures if reply.failure.kind != FailureKind.MEDIA]
    if internal:
        index, reply = internal[0]
        raise WorkerFailure(
            f"the worker failed on image {images[index].filename!r} (job {reply.job_id}): {reply.failure.detail}; "
            "the job is kept in the failed job registry for inspection"
        )
    if failures:
        index, reply = failures[0]
        raise InvalidMedia(
            f"image {images[index].filename!r} could not be read (job {reply.job_id}): {reply.failure.detail}"
        )


def build_response(
    images: list[ImageUpload], submission: Submission, replies: dict[int, ReplyMessage], started: float
) -> DetectResponse:
    """Results in request order, once every image has a reply and none failed."""
    raise_for_failures(images, replies)
    results = [replies[index].result for index in range(len(images))]
    model = next((reply.model for reply in replies.values() if reply.model is not None), None) or ModelInfo()
    return DetectResponse(
        model=model,
        results=[
            ImageResult(
                filename=result.filename,
                width=result.width,
                height=result.height,
                detections=result.detections,
                gradcam=result.gradcam,
                preview=result.preview,
            )
            for result in results
        ],
        timing=Timing(
            queue_ms=round(max(result.queue_ms for result in results), 3),
            inference_ms=round(max(result.inference_ms for result in results), 3),
            total_ms=round((time.perf_counter() - started) * 1000.0, 3),
        ),
    )
