"""Video jobs: POST /jobs, GET /jobs/{job_id}, GET /jobs/{job_id}/result, GET /jobs/{job_id}/video, DELETE.

The upload is streamed into the job's directory under a byte cap (service.video), probed with PyAV, checked
against the duration, resolution and input-budget limits, then cut into chunk jobs on the video queue
(jobs.store.VideoJobStore). Everything after acceptance is read back from Redis and the storage folder, so a
restarted API answers for jobs accepted before the restart.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from jobs.contracts import over_input_budget
from jobs.settings import Settings
from jobs.store import JobStorage, VideoJobStore
from jobs.video import (
    InvalidJobIdError,
    JobAccepted,
    JobState,
    VideoInfo,
    VideoJobResult,
    VideoParams,
    VideoState,
    VideoStatus,
    new_job_id,
    plan_chunks,
    processed_frame_count,
)
from service.deps import AuthDep, BrokerDep, MetricsDep, QuotaDep, SettingsDep
from service.errors import InvalidMedia, JobNotFound, JobNotReady, PixelLimitExceeded, UnsupportedMedia, UploadTooLarge
from service.queueing import JobBroker, unavailable
from service.routes.detect import resolve_size
from service.schemas import ERROR_RESPONSES, ErrorResponse
from service.uploads import check_declared_length, multipart_boundary
from service.video import (
    MULTIPART_OVERHEAD_BYTES,
    VIDEO_FIELD,
    VideoProbeError,
    VideoUploadReader,
    probe_video,
    video_limit_message,
)

logger = logging.getLogger(__name__)
router = APIRouter(tags=["video jobs"])

JOB_TIMEOUT_S = 3600
MIN_VIDEO_SIDE = 16

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


NOT_FOUND = {404: {"model": ErrorResponse, "description": "unknown, expired or malformed job id"}}
NOT_READY = {409: {"model": ErrorResponse, "description": "the job has not finished (yet)"}}


def video_store(connection: Any, settings: Settings) -> VideoJobStore:
    return VideoJobStore(connection, settings.queue_prefix, JobStorage(settings.storage), settings.job_ttl_s)


def check_limits(info: VideoInfo, settings: Settings) -> None:
    """Duration and resolution limits, with the numbers and the setting to change in the message."""
    if min(info.width, info.height) < MIN_VIDEO_SIDE:
        raise InvalidMedia(
            f"the video is {info.width}x{info.height}; frames need at least {MIN_VIDEO_SIDE} pixels on each side "
            "for detection and the annotated MP4"
        )
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
    query: Annotated[VideoParams, Query()],
    settings: SettingsDep,
    broker: BrokerDep,
    metrics: MetricsDep,
    _quota: QuotaDep,
) -> JobAccepted:
    params = resolve_size(settings, query)
    boundary = multipart_boundary(request.headers.get("content-type"), VIDEO_FIELD, "the video")
    check_declared_length(
        request.headers.get("content-length"),
        settings.max_video_bytes + MULTIPART_OVERHEAD_BYTES,
        lambda size, _: video_limit_message(size, settings.max_video_bytes),
    )
    store = video_store(broker.sync_redis, settings)
    job_id = new_job_id()
    await run_in_threadpool(store.storage.create, job_id)
    reader = VideoUploadReader(boundary, store.storage, job_id, settings.max_video_bytes)
    try:
        try:
            received = await reader.read(request.stream())
        finally:
            metrics.add_upload_bytes("/jobs", reader.body_bytes)
        info = await run_in_threadpool(probe_or_refuse, received.path)
        check_limits(info, settings)
        await check_frame_budget(info, params, broker, settings)
        await run_in_threadpool(accept, store, settings, job_id, info, params, received.path.name)
    except BaseException:
        await run_in_threadpool(store.storage.remove, job_id)
        raise
    status_url = f"/jobs/{job_id}"
    response.headers["Location"] = status_url
    return JobAccepted(job_id=job_id, status_url=status_url)


async def check_frame_budget(info: VideoInfo, params: VideoParams, broker: JobBroker, settings: Settings) -> None:
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
    store: VideoJobStore, settings: Settings, job_id: str, info: VideoInfo, params: VideoParams, input_name: str
) -> None:
    """Write the job state and queue its chunks (Redis errors become 503)."""
    chunks = plan_chunks(info.frames, params.frame_stride, settings.video_chunk_frames)
    if not chunks:
        raise InvalidMedia("the video has no frames")
    frames_total = processed_frame_count(info.frames, params.frame_stride)
    try:
        store.create(job_id, info=info, params=params, chunks=chunks, frames_total=frames_total, input_name=input_name)
        store.enqueue(job_id, chunks, job_timeout_s=JOB_TIMEOUT_S)
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from exc


def load_state(store: VideoJobStore, settings: Settings, job_id: str) -> VideoState:
    """The job's state, or 404."""
    try:
        state = store.read(job_id)
    except InvalidJobIdError as exc:
        raise JobNotFound(f"no job {job_id[:64]!r}: job ids are the 32-character ids POST /jobs returns") from exc
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from exc
    if state is None:
        raise JobNotFound(f"no job {job_id!r}: it never existed or expired after MASENET_JOB_TTL_S")
    return state


@router.get(
    "/jobs/{job_id}",
    response_model=JobState,
    responses={**ERROR_RESPONSES, **NOT_FOUND},
    summary="Status and progress of a video job",
)
async def get_job(job_id: str, settings: SettingsDep, broker: BrokerDep, _auth: AuthDep) -> JobState:
    state = await run_in_threadpool(load_state, video_store(broker.sync_redis, settings), settings, job_id)
    return state.public()


@router.get(
    "/jobs/{job_id}/result",
    response_model=VideoJobResult,
    responses={**ERROR_RESPONSES, **NOT_FOUND, **NOT_READY},
    summary="Detections and tracks per processed frame (409 until the job has finished)",
)
async def get_result(job_id: str, settings: SettingsDep, broker: BrokerDep, _auth: AuthDep) -> Any:
    store = video_store(broker.sync_redis, settings)
    state = await run_in_threadpool(load_state, store, settings, job_id)
    if state.status != VideoStatus.FINISHED:
        if state.error:
            raise JobNotReady(f"job {job_id} is {state.status.value}: {state.error}")
        raise JobNotReady(f"job {job_id} is {state.status.value}; poll GET /jobs/{job_id} until it is finished")
    path = store.storage.result_path(job_id)
    if not path.is_file():
        raise JobNotFound(f"the result of job {job_id} is gone (expired after MASENET_JOB_TTL_S)")
    return FileResponse(path, media_type="application/json")


@router.get(
    "/jobs/{job_id}/video",
    response_class=FileResponse,
    responses={
        **ERROR_RESPONSES,
        **NOT_FOUND,
        **NOT_READY,
        200: {"content": {"video/mp4": {}}, "description": "annotated MP4"},
    },
    summary="The annotated MP4 (jobs submitted with annotate=true, once finished)",
)
async def get_video(job_id: str, settings: SettingsDep, broker: BrokerDep, _auth: AuthDep) -> FileResponse:
    store = video_store(broker.sync_redis, settings)
    state = await run_in_threadpool(load_state, store, settings, job_id)
    if not state.params.annotate:
        raise JobNotReady(f"job {job_id} has no annotated video: submit with annotate=true to get one")
    path = store.storage.annotated_path(job_id)
    if state.status != VideoStatus.FINISHED:
        raise JobNotReady(f"the annotated video of job {job_id} is not ready (job is {state.status.value})")
    if not path.is_file():
        raise JobNotFound(f"the annotated video of job {job_id} is gone (expired after MASENET_JOB_TTL_S)")
    return FileResponse(path, media_type="video/mp4", filename=f"{job_id}.mp4")


@router.delete(
    "/jobs/{job_id}",
    response_model=JobState,
    responses={**ERROR_RESPONSES, **NOT_FOUND},
    summary="Cancel a video job and delete its files",
)
async def delete_job(job_id: str, settings: SettingsDep, broker: BrokerDep, _auth: AuthDep) -> JobState:
    store = video_store(broker.sync_redis, settings)
    await run_in_threadpool(load_state, store, settings, job_id)  # 404 for an unknown job
    try:
        await run_in_threadpool(store.cancel, job_id)
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from exc
    return (await run_in_threadpool(load_state, store, settings, job_id)).public()
