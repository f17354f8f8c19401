"""Prometheus metrics of the API process, served at `GET /metrics`.

Each app owns a `CollectorRegistry` (one uvicorn process per API container; no multiprocess mode). The
queue depth, the video jobs' outcomes and the live streams by status are read from Redis at scrape time by a
custom collector. Recording a metric never fails a request: every update goes through `safely`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.rqueue import queue_key
from jobs.settings import Settings
from jobs.store import outcomes_key
from jobs.stream_store import StreamStore
from jobs.streams import StreamStatus

logger = logging.getLogger(__name__)

REJECT_REASONS = (
    "size",
    "pixels",
    "media",
    "params",
    "queue_full",
    "auth",
    "timeout",
    "worker_error",
    "unavailable",
    "client_gone",
    "rate_limit",
    "streams",
)
VIDEO_JOB_STATUSES = ("accepted", "finished", "failed", "canceled")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def safely(update: Callable[[], Any]) -> None:
    """Run a metric update, logging instead of raising: metrics never fail a request."""
    try:
        update()
    except Exception:  # pragma: no cover - defensive
        logger.debug("metric update failed", exc_info=True)


class RedisStateCollector(Collector):
    """Read from Redis at scrape time: `masenet_queue_depth{queue}` (LLEN of the image and video queues),
    `masenet_video_jobs_total{status}` (video jobs by outcome, counted once per job by whichever process ended it)
    and `masenet_streams{status}` (live streams kept, by status)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: redis.Redis | None = None

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(
                self._settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
            )
        return self._client

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        depth = GaugeMetricFamily("masenet_queue_depth", "Jobs waiting in each queue", labels=["queue"])
        video_jobs = CounterMetricFamily("masenet_video_jobs", "Video jobs by outcome", labels=["status"])
        streams = GaugeMetricFamily("masenet_streams", "Live streams kept, by status", labels=["status"])
        queues = {"images": self._settings.image_queue, "video": self._settings.video_queue}
        try:
            with self._redis().pipeline(transaction=False) as pipeline:
                for name in queues.values():
                    pipeline.llen(queue_key(name))
                pipeline.hgetall(outcomes_key(self._settings.queue_prefix))
                *depths, outcomes = pipeline.execute()
            records = StreamStore(self._redis(), self._settings.queue_prefix, self._settings.stream_ttl_s).records()
        except Exception as exc:  # Redis down: no sample, never an error
            logger.debug("queue depth unavailable: %s", exc)
            return [depth, video_jobs, streams]
        by_status = Tally(record.status.value for record in records)
        for status in StreamStatus:
            streams.add_metric([status.value], float(by_status.get(status.value, 0)))
        for label, value in zip(queues, depths, strict=True):
            depth.add_metric([label], float(value))
        counts = {name.decode(): int(value) for name, value in outcomes.items()}
        for status in VIDEO_JOB_STATUSES:
            video_jobs.add_metric([status], float(counts.get(status, 0)))
        return [depth, video_jobs, streams]


class ApiMetrics:
    """The API's metrics on their own registry."""

    def __init__(self, settings: Settings, with_process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry()
        if with_process_metrics:
            ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "masenet_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "masenet_http_request_duration_seconds",
            "HTTP request duration by route template",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("masenet_http_requests_in_flight", "HTTP requests being served", registry=self.registry)
        self.upload_bytes = Counter(
            "masenet_upload_bytes", "Request body bytes read", ["route"], registry=self.registry
        )
        self.rejected = Counter(
            "masenet_rejected_requests",
            "Requests answered with an error, by reason",
            ["reason"],
            registry=self.registry,
        )
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)
        self.abandoned_images = Counter(
            "masenet_abandoned_images",
            "Queued images canceled because their client left before the answer",
            registry=self.registry,
        )
        self.registry.register(RedisStateCollector(settings))

    def reject(self, reason: str) -> None:
        safely(lambda: self.rejected.labels(reason=reason).inc())

    def add_upload_bytes(self, route: str, count: int) -> None:
        safely(lambda: self.upload_bytes.labels(route=route).inc(count))


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/jobs/{job_id}`), or `unmatched` to keep label cardinality bounded."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class HttpMetricsMiddleware:
    """Pure ASGI middleware: request count, duration and in-flight gauge per route template."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status_holder = {"status": 500}

        async def send_with_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = int(message["status"])
            await send(message)

        start = time.perf_counter()
        safely(self.metrics.in_flight.inc)
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            elapsed = time.perf_counter() - start
            route = route_template(scope)
            method = scope.get("method", "")
            safely(self.metrics.in_flight.dec)
            safely(
                lambda: self.metrics.requests.labels(
                    route=route, method=method, status=str(status_holder["status"])
                ).inc()
            )
            safely(lambda: self.metrics.duration.labels(route=route).observe(elapsed))
