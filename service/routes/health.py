"""GET /healthz (the process is alive), GET /readyz (Redis answers and a worker has a model loaded) and GET /status
(workers, queue depths and live streams, behind the API key: it names hosts)."""

from __future__ import annotations

from collections import Counter

import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from jobs.contracts import WorkerStatus
from jobs.rqueue import queue_key
from jobs.stream_store import StreamStore
from jobs.streams import StreamStatus
from service.deps import AuthDep, BrokerDep, SettingsDep
from service.queueing import readiness_problem, unavailable
from service.schemas import ERROR_RESPONSES, ErrorResponse, HealthResponse, QueueDepths, ReadyResponse, StatusResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, summary="The API process is alive")
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ErrorResponse, "description": "Redis unreachable, no worker ready, or shutting down"}},
    summary="Redis answers and at least one worker has its model loaded",
)
async def readyz(request: Request, settings: SettingsDep, broker: BrokerDep) -> ReadyResponse | JSONResponse:
    if getattr(request.app.state, "draining", False):
        detail = "the API is shutting down (SIGTERM): send new requests to another instance"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "5"})
    try:
        await broker.ping()
        states = await broker.workers()
    except redis.RedisError as exc:
        detail = f"Redis at {settings.redis_display_url} is unreachable ({type(exc).__name__}: {exc})"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "5"})
    problem = readiness_problem(states)
    if problem is not None:
        return JSONResponse({"detail": problem}, status_code=503, headers={"Retry-After": "5"})
    ready = [state.name for state in states if state.status == WorkerStatus.READY]
    return ReadyResponse(status="ready", workers=ready)


@router.get(
    "/status", response_model=StatusResponse, responses=ERROR_RESPONSES, summary="Workers, queue depths, live streams"
)
async def status(settings: SettingsDep, broker: BrokerDep, _auth: AuthDep) -> StatusResponse:
    store = StreamStore(broker.sync_redis, settings.queue_prefix, settings.stream_ttl_s)
    try:
        states = await broker.workers()
        images = int(await broker.async_redis.llen(queue_key(settings.image_queue)))
        video = int(await broker.async_redis.llen(queue_key(settings.video_queue)))
        records = await run_in_threadpool(store.records)
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from exc
    counts = Counter(record.status.value for record in records)
    streams = {status.value: counts.get(status.value, 0) for status in StreamStatus}
    return StatusResponse(workers=states, queues=QueueDepths(images=images, video=video), streams=streams)
