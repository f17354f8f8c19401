"""The FastAPI application: routers, error handlers, metrics middleware, Redis clients.

`create_app(settings)` builds an independent app (its own Redis clients and metrics registry), so tests
can run several side by side. This module and everything it imports stay free of torch.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from jobs.settings import Settings, get_settings
from service.errors import ClientGone, ServiceError
from service.metrics import ApiMetrics, HttpMetricsMiddleware
from service.queueing import JobBroker
from service.routes import console, detect, health, jobs, metrics, models, streams

logger = logging.getLogger(__name__)

DESCRIPTION = """
Infrared small-target detection with MASENet. `POST /detect` takes one or more frames (multipart parts
named `image`) and answers boxes per frame, optionally with a Grad-CAM overlay; `POST /jobs` takes a recorded
video, `POST /streams` a live camera (RTSP or HTTP) whose detections arrive as server-sent events. Requests are
queued in Redis and served by batching workers. With `MASENET_API_KEYS` set, send `Authorization: Bearer <key>`
(health endpoints, `/metrics` and these docs stay open).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for the given settings (default: the environment's)."""
    settings = settings or get_settings()
    api_metrics = ApiMetrics(settings)
    broker = JobBroker(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await broker.close()

    app = FastAPI(title="MASENet detection service", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = api_metrics
    app.state.broker = broker
    routers = (detect.router, jobs.router, streams.router, models.router, health.router, metrics.router, console.router)
    for router in routers:
        app.include_router(router)
    app.add_exception_handler(ServiceError, _service_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(ClientDisconnect, _client_disconnect_handler)
    app.add_exception_handler(405, _method_not_allowed_handler)
    app.add_exception_handler(Exception, _unexpected_error_handler)
    app.add_middleware(HttpMetricsMiddleware, metrics=api_metrics)
    return app


def _metrics(request: Request) -> ApiMetrics | None:
    return getattr(request.app.state, "metrics", None)


async def _service_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    metrics = _metrics(request)
    if metrics is not None:
        metrics.reject(exc.reason)
    if exc.status_code >= 500:
        logger.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc.detail)
    elif isinstance(exc, ClientGone):
        logger.info("%s %s -> 499: %s", request.method, request.url.path, exc.detail)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _client_disconnect_handler(request: Request, exc: Exception) -> JSONResponse:
    return await _service_error_handler(request, ClientGone("the client closed the connection during its upload"))


def allowed_methods(routes: list[Any], scope: Any) -> set[str]:
    """Every method some route serves at the scope's path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            methods |= allowed_methods(list(inner.routes), scope)
        elif route.matches(scope)[0] != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return methods


async def _method_not_allowed_handler(request: Request, exc: Exception) -> Response:
    allow = ", ".join(sorted(allowed_methods(list(request.app.routes), request.scope) | {"OPTIONS"}))
    if request.method == "OPTIONS":
        return Response(status_code=204, headers={"Allow": allow})
    detail = f"{request.method} is not served at {request.url.path}: use {allow}"
    return JSONResponse({"detail": detail}, status_code=405, headers={"Allow": allow})


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    metrics = _metrics(request)
    if metrics is not None:
        metrics.reject("params")
    return JSONResponse({"detail": describe_validation_errors(exc.errors())}, status_code=422)


async def _unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        {"detail": f"internal error ({type(exc).__name__}); the service logs have the details"}, status_code=500
    )


def describe_validation_errors(errors: Any) -> str:
    """FastAPI's error list as one sentence per problem: where, what is wrong, what was sent."""
    sentences = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ())]
        where = f"{location[0]} parameter {'.'.join(location[1:])!r}" if len(location) > 1 else ".".join(location)
        sentence = f"{where}: {error.get('msg', 'invalid value')}"
        if "input" in error and error["input"] is not None:
            sentence += f" (got {error['input']!r})"
        sentences.append(sentence)
    return "; ".join(sentences) or "invalid request"
