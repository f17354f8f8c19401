"""Subcommands contributed to `masenet` (see service/cli.py). No heavy imports at module level.

masenet serve --host 127.0.0.1 --port 8000   the API under uvicorn (one process)
masenet up [--host --port]                   Redis (MASENET_REDIS_URL, or a private redis-server), one
                                             worker and the API; Ctrl-C stops everything it started
masenet bench service [...]                  throughput and latency of POST /detect per concurrency
masenet bench video [...]                    video throughput with 1 and 2 workers (video_bench)
masenet bench load [...]                     mixed load for a set time, workers killed along the way (load_bench)
masenet bench streams [...]                  live camera streams: processed fps, drops, latency (stream_bench)
masenet bench scheduler [...]                small and big frames and a video on one worker (scheduler_bench)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import time

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    """Add serve, up, `bench service` and `bench load`."""
    serve = subparsers.add_parser("serve", help="run the HTTP API (settings from MASENET_* variables)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    serve.set_defaults(func=run_serve)

    up = subparsers.add_parser(
        "up", help="run Redis (if needed), one worker and the API locally; Ctrl-C stops them all"
    )
    up.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    up.set_defaults(func=run_up)

    bench = bench_subparsers.add_parser(
        "service",
        help="throughput and latency of POST /detect at several concurrencies, next to the bare model",
    )
    bench.add_argument("--url", default=None, help="a running service; default: start Redis, a worker and the API")
    bench.add_argument("--concurrency", default="1,4,16,64", help="comma-separated client counts (default 1,4,16,64)")
    bench.add_argument("--requests", type=int, default=200, help="requests per concurrency level (default 200)")
    bench.add_argument(
        "--size",
        default="320x256,640x512,1280x1024",
        help="comma-separated frame sizes WIDTHxHEIGHT, one table each (default 320x256,640x512,1280x1024)",
    )
    bench.add_argument(
        "--imgsz",
        type=int,
        default=None,
        help="a fixed longer side sent with each request (default: none, the "
        "service's default, the model's pixel scale)",
    )
    bench.add_argument("--weights", default=None, help="checkpoint for the worker and the bare model")
    bench.add_argument("--device", default=None, help="device for the worker and the bare model (default auto)")
    bench.add_argument("--max-batch", type=int, default=None, help="worker MASENET_MAX_BATCH (default per device)")
    bench.add_argument(
        "--metrics-url", default=None, help="worker /metrics URL for batch sizes (self-started: found automatically)"
    )
    bench.add_argument("--api-key", default=None, help="bearer key for a service with MASENET_API_KEYS")
    bench.add_argument("--skip-bare", action="store_true", help="do not measure the bare model")
    bench.add_argument(
        "--timeout-s",
        type=float,
        default=600.0,
        help="MASENET_TIMEOUT_S of a self-started API (default 600: the levels measure latency under load, not 504s)",
    )
    bench.set_defaults(func=run_bench_service)

    from tools import load_bench, scheduler_bench, stream_bench, video_bench

    video_bench.register(subparsers, bench_subparsers)
    load_bench.register(subparsers, bench_subparsers)
    stream_bench.register(subparsers, bench_subparsers)
    scheduler_bench.register(subparsers, bench_subparsers)


def run_serve(args: argparse.Namespace) -> int:
    from jobs.settings import get_settings
    from service.server import serve

    level = logging.getLogger().getEffectiveLevel()
    serve(get_settings(), args.host, args.port, logging.getLevelName(level).lower(), access_log=level <= logging.INFO)
    return 0


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signum)


def run_up(args: argparse.Namespace) -> int:
    from jobs.settings import get_settings, mask_url_password
    from tools.launch import LaunchError, local_stack, redis_reachable

    settings = get_settings()
    shown_url = mask_url_password(settings.redis_url)
    previous = {signum: signal.signal(signum, _raise_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as resources:  # the handlers below run before the stack stops
            try:
                redis_url: str | None = settings.redis_url
                if redis_reachable(settings.redis_url):
                    print(f"using Redis at {shown_url}")
                else:
                    print(f"Redis at {shown_url} is not reachable: starting a private redis-server")
                    redis_url = None
                stack = resources.enter_context(
                    local_stack(redis_url=redis_url, host=args.host, port=args.port, ready_timeout_s=None)
                )
                if redis_url is None:
                    print(f"private Redis at {stack.redis_url} (no persistence; stopped on exit)")
                base_url = stack.api_url
                print(f"waiting for the worker to load the model ({base_url}/readyz) ...")
                stack.wait_ready()
                print(f"MASENet detection service ready at {base_url} (API docs: {base_url}/docs). Ctrl-C to stop.")
                while (exited := stack.group.first_exited()) is None:
                    time.sleep(0.5)
                print(f"a service process exited (code {exited.returncode}); stopping the others")
                return 1
            except _Stop:
                print("stopping ...")
                return 0
            except LaunchError as exc:
                print(f"masenet up: {exc}")
                return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_bench_service(args: argparse.Namespace) -> int:
    from tools import bench

    bench.match_worker_cpu_policy()  # before anything imports torch
    from jobs.settings import get_settings
    from model.cli_args import parse_size
    from model.detector import resolve_device
    from tools.launch import free_port, local_stack
    from tools.traffic import encode_png, synthetic_frames

    sizes = [parse_size(text) for text in args.size.split(",") if text.strip()]
    levels = [int(value) for value in args.concurrency.split(",") if value.strip()]
    settings = get_settings()
    weights = args.weights or (str(settings.weights) if settings.weights else None)
    device = args.device or settings.device
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    max_batch = args.max_batch or settings.effective_max_batch(on_gpu=resolve_device(device).type == "cuda")

    with contextlib.ExitStack() as resources:
        url, metrics_url = args.url, args.metrics_url
        if url is None:
            metrics_port = free_port()
            overrides = {
                "MASENET_WORKER_METRICS_PORT": str(metrics_port),
                "MASENET_MAX_BATCH": str(max_batch),
                "MASENET_DEVICE": device,
                "MASENET_MAX_QUEUE": str(max(1024, 4 * max(levels))),
                "MASENET_TIMEOUT_S": str(args.timeout_s),
            }
            if weights:
                overrides["MASENET_WEIGHTS"] = weights
            stack = resources.enter_context(local_stack(overrides, log_level="WARNING", ready_timeout_s=None))
            url = stack.api_url
            metrics_url = metrics_url or f"http://127.0.0.1:{metrics_port}/metrics"
            print(f"started Redis, a worker (max batch {max_batch}) and the API at {url}")
            stack.wait_ready()
        for width, height in sizes:
            frames = synthetic_frames(width, height)
            payloads = [encode_png(frame) for frame in frames]
            bare = None
            if not args.skip_bare:  # measured while the service is idle, around every level (see tools/bench.py)
                model = bench.BareModel(frames, weights, device, max_batch, args.imgsz)
                print(f"bare model: {model.describe()}")
                bare = model.throughput
            results, bare_runs = bench.run_levels(
                url, payloads, levels, args.requests, args.imgsz, metrics_url, headers, bare=bare
            )
            served = f"imgsz {args.imgsz}" if args.imgsz else "the service's defaults"
            title = f"POST /detect, one {width}x{height} PNG per request, {served}, {args.requests} requests per level"
            runs = ", ".join(f"{run:.1f}" for run in bare_runs)
            print(f"\n{title}\n{bench.format_table(results, max_batch)}\nbare model runs: {runs} img/s", flush=True)
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')} for the worker and the bare model")
    return 0
