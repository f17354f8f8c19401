"""`masenet worker`: one batching rq worker on the image and video queues (no torch at import)."""

from __future__ import annotations

import argparse
import logging


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `masenet worker`."""
    parser = subparsers.add_parser(
        "worker",
        help="run a batching inference worker (settings from MASENET_* variables)",
        description="Load MASENet once (MASENET_DEVICE, MASENET_WEIGHTS, ...) and serve the image queue, then the "
        "video queue, from MASENET_REDIS_URL. Metrics on MASENET_WORKER_METRICS_PORT (or the next free port).",
    )
    parser.add_argument("--name", default=None, help="worker name (default: <hostname>-<pid>)")
    parser.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    parser.add_argument("--metrics-port", type=int, default=None, help="override MASENET_WORKER_METRICS_PORT")
    parser.set_defaults(func=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    import redis

    from jobs.settings import get_settings
    from worker.worker import BatchingWorker, default_worker_name

    settings = get_settings()
    if args.metrics_port is not None:
        settings = settings.model_copy(update={"worker_metrics_port": args.metrics_port})
    connection = redis.Redis.from_url(settings.redis_url)
    try:
        connection.ping()
    except redis.RedisError as exc:
        raise SystemExit(f"masenet worker: Redis at {settings.redis_display_url} is unreachable: {exc}") from exc
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("rq.worker").setLevel(logging.WARNING)  # rq logs every job at INFO
    worker = BatchingWorker(
        [settings.image_queue, settings.video_queue],
        connection=connection,
        name=args.name or default_worker_name(),
        settings=settings,
    )
    worked = worker.work(burst=args.burst)
    return 0 if worked or args.burst or worker.runtime.detector is not None else 1
