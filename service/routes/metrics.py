"""GET /metrics: the API's Prometheus metrics (open without a key, like the health endpoints)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import MetricsDep

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics of this API process")
def metrics(api_metrics: MetricsDep) -> Response:
    # A plain function: FastAPI runs it in the thread pool, so the Redis read of the queue depth never blocks the loop.
    return Response(generate_latest(api_metrics.registry), media_type=CONTENT_TYPE_LATEST)
