"""Video jobs: POST /jobs, GET /jobs/{job_id}, GET /jobs/{job_id}/result, GET /jobs/{job_id}/video, DELETE.

The upload is streamed part by part into the job's directory under a byte cap (never held whole in
memory), probed with PyAV, checked against the duration and resolution limits, then cut into chunk jobs
on the video queue (see service.video). Everything after acceptance is read back from Redis and the
storage folder, so a restarted API answers for jobs accepted before the restart.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from jobs.contracts import MAX_PIXEL_SCALE, Detection, DetectParams, TtaMode, over_input_budget
from jobs.settings import Settings
from service.deps import AuthDep, BrokerDep, MetricsDep, SettingsDep
from service.errors import (
    InvalidMedia,
    InvalidParameters,
    PixelLimitExceeded,
    ServiceError,
    UnsupportedMedia,
    UploadTooLarge,
)
from service.metrics import ApiMetrics, safely
from service.queueing import JobBroker, unavailable
from service.routes.detect import IMGSZ_HELP, PIXEL_SCALE_HELP, TTA_HELP, detect_params
from service.schemas import ERROR_RESPONSES, ErrorResponse
from service.video import (
    FINAL_STATUSES,
    InvalidJobIdError,
    JobStatus,
    JobStorage,
    UploadTooLargeError,
    UploadWriter,
    VideoInfo,
    VideoProbeError,
    cancel_video_job,
    create_job_state,
    enqueue_video_job,
    job_key,
    new_job_id,
    plan_chunks,
    probe_video,
    processed_frame_count,
    read_job_state,
    safe_suffix,
    validate_job_id,
)

logger = logging.getLogger(__name__)
router = APIRouter(tags=["video jobs"])

VIDEO_FIELD = "video"
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries and part headers on top of the video itself
CLEANUP_INTERVAL_S = 60.0
JOB_TIMEOUT_S = 3600

VIDEO_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [VIDEO_FIELD],
                    "additionalProperties": False,  # any other part is refused with 422
                    "properties": {
                        VIDEO_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "the recording: MP4/H.264, MKV, AVI or anything FFmpeg decodes",
                        }
                    },
                },
                "encoding": {VIDEO_FIELD: {"contentType": "video/*, application/octet-stream"}},
            }
        },
    }
}


class JobNotFound(ServiceError):
    status_code = 404
    reason = "params"


class JobNotReady(ServiceError):
    status_code = 409
    reason = "params"


class JobAccepted(BaseModel):
    job_id: str
    status_url: str = Field(description="poll this for progress: GET /jobs/{job_id}")


class JobProgress(BaseModel):
    frames_done: int = Field(description="processed frames so far")
    frames_total: int = Field(description="frames the job processes (every frame_stride-th frame)")


class JobState(BaseModel):
    job_id: str
    status: Literal["queued", "started", "finished", "failed", "canceled"]
    progress: JobProgress
    error: str | None = Field(None, description="why the job failed, or null")
    created_at: str | None = Field(None, description="ISO 8601, UTC")
    started_at: str | None = None
    ended_at: str | None = None


class TrackedDetection(Detection):
    track_id: int | None = Field(None, description="stable id of the target's track; null if untracked")


class FrameResult(BaseModel):
    index: int = Field(description="frame number in the source video, from 0")
    time_s: float = Field(description="presentation time of the frame")
    detections: list[TrackedDetection]


class VideoSummary(BaseModel):
    fps: float
    width: int
    height: int
    frames: int


class VideoJobResult(BaseModel):
    video: VideoSummary
    frames: list[FrameResult] = Field(description="one entry per processed frame, in order")


NOT_FOUND = {404: {"model": ErrorResponse, "description": "unknown, expired or malformed job id"}}
NOT_READY = {409: {"model": ErrorResponse, "description": "the job has not finished (yet)"}}


# ----------------------------------------------------------------------------------------------- upload


@dataclass
class ReceivedVideo:
    path: Path
    size: int


class VideoUploadReader:
    """Streams the `video` part of a multipart body into a file under a byte cap; other parts are refused."""

    def __init__(self, boundary: bytes, storage: JobStorage, job_id: str, max_bytes: int) -> None:
        self.storage, self.job_id, self.max_bytes = storage, job_id, max_bytes
        self.body_bytes = 0
        self.finished = False
        self.received: ReceivedVideo | None = None
        self._headers: dict[str, bytes] = {}  # raw values: a UTF-8 file name must reach the parser as bytes
        self._field, self._value = bytearray(), bytearray()
        self._writer: UploadWriter | None = None
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
                "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    async def read(self, request: Request) -> ReceivedVideo:
        try:
            async for chunk in request.stream():
                self.body_bytes += len(chunk)
                if self.body_bytes > self.max_bytes + MULTIPART_OVERHEAD_BYTES:
                    raise UploadTooLargeError(f"the upload is larger than the limit of {self.max_bytes} bytes")
                self._parser.write(chunk)
            self._parser.finalize()
        except UploadTooLargeError as exc:
            raise UploadTooLarge(f"{exc} (MASENET_MAX_VIDEO_BYTES): send a shorter or smaller video") from exc
        except ServiceError:
            raise
        except Exception as exc:
            raise InvalidParameters(f"malformed multipart body: {exc}") from exc
        finally:
            self._close_writer(failed=self.received is None)
        if not self.finished:
            raise InvalidParameters("the multipart body ended early: the upload was cut off")
        if self.received is None:
            raise InvalidParameters(f"no video in the request: send the file in a multipart part named '{VIDEO_FIELD}'")
        return self.received

    def _on_part_begin(self) -> None:
        self._headers = {}

    def _on_header_end(self) -> None:
        self._headers[self._field.decode("latin-1").strip().lower()] = bytes(self._value).strip()
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get("content-disposition"))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if disposition != b"form-data" or name != VIDEO_FIELD:
            raise InvalidParameters(
                f"unexpected form field {name!r}: send the video in a part named '{VIDEO_FIELD}' and the options "
                "as query parameters"
            )
        if self.received is not None or self._writer is not None:
            raise InvalidParameters("one video per job: send a single part named 'video'")
        filename = options.get(b"filename", b"").decode("utf-8", "replace")
        path = self.storage.input_path(self.job_id, safe_suffix(filename))
        self._writer = UploadWriter(path, self.max_bytes).__enter__()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._writer is not None:
            self._writer.write(bytes(data[start:end]))

    def _on_part_end(self) -> None:
        if self._writer is not None:
            self.received = ReceivedVideo(path=self._writer.path, size=self._writer.size)
            self._close_writer(failed=False)

    def _on_end(self) -> None:
        self.finished = True

    def _close_writer(self, failed: bool) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            error = RuntimeError("upload aborted") if failed else None
            writer.__exit__(type(error) if error else None, error, None)


def multipart_boundary(request: Request) -> bytes:
    media_type, options = parse_options_header(request.headers.get("content-type") or "")
    if media_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise UnsupportedMedia(f"send the video as multipart/form-data in a part named '{VIDEO_FIELD}'")
    return options[b"boundary"]


def check_declared_length(request: Request, max_bytes: int) -> None:
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)  # not str.isdigit(): it accepts '²', which int() refuses
    except ValueError as exc:
        raise InvalidParameters(f"invalid Content-Length header {declared!r}") from exc
    if size > max_bytes + MULTIPART_OVERHEAD_BYTES:
        raise UploadTooLarge(
            f"the upload is {declared} bytes, above the limit of {max_bytes} bytes (MASENET_MAX_VIDEO_BYTES): "
            "send a shorter or smaller video"
        )


def check_limits(info: VideoInfo, settings: Settings) -> None:
    """Duration and resolution limits, with the numbers and the setting to change in the message."""
    if info.duration_s > settings.max_video_seconds:
        raise UploadTooLarge(
            f"the video is {info.duration_s:.1f} s long, above the limit of {settings.max_video_seconds:g} s "
            "(MASENET_MAX_VIDEO_SECONDS): cut it into shorter pieces"
        )
    if info.width * info.height > settings.max_video_pixels:
        raise PixelLimitExceeded(
            f"the video is {info.width}x{info.height} = {info.width * info.height} pixels per frame, above the "
            f"limit of {settings.max_video_pixels} (MASENET_MAX_VIDEO_PIXELS): scale it down"
        )


def cleanup_if_due(request: Request, storage: JobStorage, ttl_s: int) -> None:
    """Remove expired job folders, at most once a minute per API process."""
    now = time.monotonic()
    if now - getattr(request.app.state, "video_cleanup_at", -CLEANUP_INTERVAL_S) < CLEANUP_INTERVAL_S:
        return
    request.app.state.video_cleanup_at = now
    try:
        storage.cleanup_expired(ttl_s)
    except OSError:
        logger.warning("cleaning up expired video jobs failed", exc_info=True)


# ------------------------------------------------------------------------------------------------ routes


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobAccepted,
    responses=ERROR_RESPONSES,
    openapi_extra=VIDEO_BODY,
    summary="Submit a video for asynchronous detection and tracking",
)
async def submit_job(
    request: Request,
    response: Response,
    settings: SettingsDep,
    broker: BrokerDep,
    metrics: MetricsDep,
    _auth: AuthDep,
    conf: Annotated[float, Query(ge=0.0, le=1.0, description="score threshold")] = 0.25,
    iou: Annotated[float, Query(ge=0.0, le=1.0, description="NMS IoU threshold")] = 0.45,
    max_det: Annotated[int, Query(ge=1, le=1000, description="most boxes per frame")] = 300,
    imgsz: Annotated[int | None, Query(ge=32, le=2048, multiple_of=32, description=IMGSZ_HELP)] = None,
    pixel_scale: Annotated[float | None, Query(gt=0.0, le=MAX_PIXEL_SCALE, description=PIXEL_SCALE_HELP)] = None,
    tta: Annotated[TtaMode | None, Query(description=TTA_HELP)] = None,
    frame_stride: Annotated[int, Query(ge=1, le=1000, description="process every Nth frame")] = 1,
    track: Annotated[bool, Query(description="link detections into tracks with stable track_id")] = True,
    annotate: Annotated[bool, Query(description="also render an annotated MP4 (GET /jobs/{id}/video)")] = False,
) -> JobAccepted:
    resize = detect_params(settings, imgsz=imgsz, pixel_scale=pixel_scale, tta=tta)
    boundary = multipart_boundary(request)
    check_declared_length(request, settings.max_video_bytes)
    storage = JobStorage(settings.storage)
    await run_in_threadpool(cleanup_if_due, request, storage, settings.job_ttl_s)
    job_id = new_job_id()
    await run_in_threadpool(storage.create, job_id)
    reader = VideoUploadReader(boundary, storage, job_id, settings.max_video_bytes)
    try:
        try:
            received = await reader.read(request)
        finally:
            metrics.add_upload_bytes("/jobs", reader.body_bytes)
        info = await run_in_threadpool(probe_or_refuse, received.path)
        check_limits(info, settings)
        await check_frame_budget(info, resize, broker, settings)
        params = {
            "conf": conf,
            "iou": iou,
            "max_det": max_det,
            "imgsz": resize.imgsz,
            "pixel_scale": resize.pixel_scale,
            "tta": resize.tta,
            "frame_stride": frame_stride,
            "track": track,
            "annotate": annotate,
        }
        await run_in_threadpool(accept, broker.sync_redis, settings, job_id, info, params, received.path.name)
    except BaseException:
        await run_in_threadpool(storage.remove, job_id)
        raise
    safely(lambda: metrics.video_jobs.labels(status="accepted").inc())
    status_url = f"/jobs/{job_id}"
    response.headers["Location"] = status_url
    return JobAccepted(job_id=job_id, status_url=status_url)


async def check_frame_budget(info: VideoInfo, params: DetectParams, broker: JobBroker, settings: Settings) -> None:
    """413 at upload when the video's frames would fill more network input than MASENET_MAX_INPUT_PIXELS (with a
    live worker's defaults; the worker checks again before its first batch)."""
    try:
        model = await broker.served_model()
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from exc
    if model is not None:
        budget = settings.max_input_pixels
        problem = over_input_budget("the video's frames", info.width, info.height, params, model, budget)
        if problem:
            raise PixelLimitExceeded(problem)


def probe_or_refuse(path: Path) -> VideoInfo:
    try:
        return probe_video(path)
    except VideoProbeError as exc:
        raise UnsupportedMedia(f"the upload is not a video this service can decode: {exc}") from exc


def accept(
    connection: Any, settings: Settings, job_id: str, info: VideoInfo, params: dict[str, Any], input_name: str
) -> None:
    """Write the job state and queue its chunks (Redis errors become 503)."""
    chunks = plan_chunks(info.frames, params["frame_stride"], settings.video_chunk_frames)
    if not chunks:
        raise InvalidMedia("the video has no frames")
    try:
        create_job_state(
            connection,
            settings.queue_prefix,
            job_id,
            info=info,
            params=params,
            chunks=chunks,
            frames_total=processed_frame_count(info.frames, params["frame_stride"]),
            input_name=input_name,
            ttl_s=settings.job_ttl_s,
        )
        enqueue_video_job(
            connection, settings.queue_prefix, job_id, chunks, job_timeout_s=JOB_TIMEOUT_S, ttl_s=settings.job_ttl_s
        )
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from exc


def load_state(connection: Any, settings: Settings, job_id: str, metrics: ApiMetrics | None = None) -> dict[str, Any]:
    """The job's state or 404; counts a final status in masenet_video_jobs_total once per job."""
    try:
        validate_job_id(job_id)
        state = read_job_state(connection, settings.queue_prefix, job_id)
        final = state is not None and JobStatus(state["status"]) in FINAL_STATUSES
        if final and metrics is not None and connection.hsetnx(job_key(settings.queue_prefix, job_id), "counted", 1):
            safely(lambda: metrics.video_jobs.labels(status=state["status"]).inc())
    except InvalidJobIdError as exc:
        raise JobNotFound(f"no job {job_id[:64]!r}: job ids are the 32-character ids POST /jobs returns") from exc
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from exc
    if state is None:
        raise JobNotFound(f"no job {job_id!r}: it never existed or expired after MASENET_JOB_TTL_S")
    return state


def to_response(state: dict[str, Any]) -> JobState:
    progress = state["progress"]
    frames_done = min(progress["frames_done"], progress["frames_total"])
    return JobState(
        job_id=state["job_id"],
        status=state["status"],
        progress=JobProgress(frames_done=frames_done, frames_total=progress["frames_total"]),
        error=state["error"],
        created_at=state["created_at"],
        started_at=state["started_at"],
        ended_at=state["ended_at"],
    )


@router.get(
    "/jobs/{job_id}",
    response_model=JobState,
    responses={**ERROR_RESPONSES, **NOT_FOUND},
    summary="Status and progress of a video job",
)
async def get_job(
    job_id: str, settings: SettingsDep, broker: BrokerDep, metrics: MetricsDep, _auth: AuthDep
) -> JobState:
    state = await run_in_threadpool(load_state, broker.sync_redis, settings, job_id, metrics)
    return to_response(state)


@router.get(
    "/jobs/{job_id}/result",
    response_model=VideoJobResult,
    responses={**ERROR_RESPONSES, **NOT_FOUND, **NOT_READY},
    summary="Detections and tracks per processed frame (409 until the job has finished)",
)
async def get_result(job_id: str, settings: SettingsDep, broker: BrokerDep, metrics: MetricsDep, _auth: AuthDep) -> Any:
    state = await run_in_threadpool(load_state, broker.sync_redis, settings, job_id, metrics)
    if state["status"] != JobStatus.FINISHED.value:
        if state["error"]:
            raise JobNotReady(f"job {job_id} is {state['status']}: {state['error']}")
        raise JobNotReady(f"job {job_id} is {state['status']}; poll GET /jobs/{job_id} until it is finished")
    path = JobStorage(settings.storage).result_path(job_id)
    if not path.is_file():
        raise JobNotFound(f"the result of job {job_id} is gone (expired after MASENET_JOB_TTL_S)")
    return FileResponse(path, media_type="application/json")


@router.get(
    "/jobs/{job_id}/video",
    response_class=FileResponse,
    responses={**ERROR_RESPONSES, **NOT_FOUND, 200: {"content": {"video/mp4": {}}, "description": "annotated MP4"}},
    summary="The annotated MP4 (jobs submitted with annotate=true, once finished)",
)
async def get_video(job_id: str, settings: SettingsDep, broker: BrokerDep, _auth: AuthDep) -> FileResponse:
    state = await run_in_threadpool(load_state, broker.sync_redis, settings, job_id)
    if not state["params"].get("annotate"):
        raise JobNotFound(f"job {job_id} has no annotated video: submit with annotate=true to get one")
    path = JobStorage(settings.storage).annotated_path(job_id)
    if state["status"] != JobStatus.FINISHED.value or not path.is_file():
        raise JobNotFound(f"the annotated video of job {job_id} is not ready (job is {state['status']})")
    return FileResponse(path, media_type="video/mp4", filename=f"{job_id}.mp4")


@router.delete(
    "/jobs/{job_id}",
    response_model=JobState,
    responses={**ERROR_RESPONSES, **NOT_FOUND},
    summary="Cancel a video job and delete its files",
)
async def delete_job(
    job_id: str, settings: SettingsDep, broker: BrokerDep, metrics: MetricsDep, _auth: AuthDep
) -> JobState:
    state = await run_in_threadpool(load_state, broker.sync_redis, settings, job_id)
    was_running = JobStatus(state["status"]) not in FINAL_STATUSES
    try:
        await run_in_threadpool(
            cancel_video_job, broker.sync_redis, settings.queue_prefix, job_id, JobStorage(settings.storage)
        )
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from exc
    key = job_key(settings.queue_prefix, job_id)
    if was_running and await run_in_threadpool(broker.sync_redis.hsetnx, key, "counted", 1):
        safely(lambda: metrics.video_jobs.labels(status="canceled").inc())
    return to_response(await run_in_threadpool(load_state, broker.sync_redis, settings, job_id))
