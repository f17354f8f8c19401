"""GET /healthz (the process is alive) and GET /readyz (Redis answers and a worker has a model loaded)."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from jobs.contracts import WorkerStatus
from service.deps import BrokerDep, SettingsDep
from service.queueing import readiness_problem
from service.schemas import ErrorResponse, HealthResponse, ReadyResponse

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
