"""`masenet bench video`: video throughput with 1 and 2 workers, and /detect latency while a video runs.

For each worker count the benchmark starts a private stack (redis-server on a free port unless
--redis-url is given, N `masenet worker` processes, one `masenet serve`), submits the clip through
`POST /jobs` with `service.client.Client` and polls until it finishes. Throughput is processed frames /
(ended_at - started_at) of the job. Before the video, it measures `/detect` latency on an idle service; while
the video runs, it measures it again (sequential requests, one frame each). The bar: p95 while a video runs
<= 2x idle.

Each worker gets cpu_count // workers intra-op threads so that runs with more workers do not
oversubscribe the cores. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.store import JobStorage
from tools.launch import Stack

if TYPE_CHECKING:
    from service.client import Client

STARTUP_TIMEOUT_S = 180.0
POLL_S = 0.5


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `masenet bench video`."""
    parser = bench_subparsers.add_parser(
        "video",
        help="video job throughput with 1 and 2 workers, /detect latency while a video runs",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("--clip", type=Path, default=None, help="video to use (default: a generated synthetic clip)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the generated clip")
    parser.add_argument("--size", default="640x512", help="WxH of the generated clip")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate of the generated clip")
    parser.add_argument("--workers", default="1,2", help="comma list of worker counts to run")
    parser.add_argument("--imgsz", type=int, default=640, help="inference size for the video and /detect")
    parser.add_argument("--frame-stride", type=int, default=1, help="process every Nth frame")
    parser.add_argument("--chunk-frames", type=int, default=None, help="MASENET_VIDEO_CHUNK_FRAMES for the run")
    parser.add_argument("--detect-requests", type=int, default=30, help="sequential /detect requests per phase")
    parser.add_argument("--weights", type=Path, default=None, help="checkpoint (default: MASENET_WEIGHTS/shipped)")
    parser.add_argument("--device", default=None, help="MASENET_DEVICE for the workers")
    parser.add_argument("--redis-url", default=None, help="use this Redis (its DB is flushed by prefix) instead")
    parser.add_argument("--work-dir", type=Path, default=None, help="where clips and storage go (default: temp)")
    parser.set_defaults(func=run_bench)


@dataclass
class RunResult:
    workers: int
    frames: int
    seconds: float
    frames_per_s: float
    chunks_per_worker: list[int]
    idle_ms: list[float] = field(default_factory=list)
    busy_ms: list[float] = field(default_factory=list)
    video_ran_throughout: bool = True


def run_bench(args: argparse.Namespace) -> int:
    from model.cli_args import parse_size
    from tools.traffic import bench_weights, first_frame_png, synthetic_clip

    work_dir = args.work_dir or Path(tempfile.gettempdir()) / "masenet-bench-video"
    work_dir.mkdir(parents=True, exist_ok=True)
    clip = args.clip or synthetic_clip(work_dir, args.seconds, *parse_size(args.size), args.fps)
    weights = bench_weights(work_dir, args.weights)
    frame_png = first_frame_png(clip)
    print(f"clip {clip} ({describe(clip)}), weights {weights}", flush=True)
    results = []
    for workers in [int(value) for value in args.workers.split(",") if value.strip()]:
        with service_stack(args, work_dir, weights, workers) as stack:
            storage = JobStorage(stack.env["MASENET_STORAGE"])
            results.append(measure(stack.api_url, storage, clip, frame_png, workers, args))
        print_table(results)
    return 0


def describe(clip: Path) -> str:
    from service.video import probe_video

    info = probe_video(clip)
    return f"{info.frames} frames, {info.width}x{info.height}, {info.fps:g} fps, {info.duration_s:.1f} s"


def bench_env(weights: Path, imgsz: int, workers: int, device: str | None = None) -> dict[str, str]:
    """Settings of a benchmark's self-started stack: each of `workers` workers gets cpu_count // workers threads."""
    env = {
        "MASENET_WEIGHTS": str(weights),
        "MASENET_IMGSZ": str(imgsz),
        "MASENET_MAX_VIDEO_SECONDS": "100000",
        "MASENET_WORKER_METRICS_PORT": "0",
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers)),
    }
    if device:
        env["MASENET_DEVICE"] = device
    return env


@contextlib.contextmanager
def service_stack(args: argparse.Namespace, work_dir: Path, weights: Path, workers: int) -> Iterator[Stack]:
    """The stack of one `bench video` run (tools.launch.local_stack)."""
    from tools.launch import local_stack

    env = bench_env(weights, args.imgsz, workers, args.device)
    if args.chunk_frames:
        env["MASENET_VIDEO_CHUNK_FRAMES"] = str(args.chunk_frames)
    with local_stack(
        env,
        workers=workers,
        redis_url=args.redis_url,
        prefix=f"bench-video-{os.getpid()}",
        log_dir=work_dir,
        worker_name="bench-worker",
        private_storage=True,
        ready_timeout_s=STARTUP_TIMEOUT_S,
    ) as stack:
        yield stack


# ------------------------------------------------------------------------------------------- measure


def timed_detects(client: Client, frame_png: bytes, count: int, imgsz: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        client.detect(("frame.png", frame_png), imgsz=imgsz)
        latencies.append((time.perf_counter() - started) * 1000.0)
    return latencies


def measure(
    api_url: str, storage: JobStorage, clip: Path, frame_png: bytes, workers: int, args: argparse.Namespace
) -> RunResult:
    from jobs.video import VideoStatus
    from service.client import Client, JobFailed

    with Client(api_url, timeout=120.0, retries=0) as client:  # no retries: a refusal ends the run
        timed_detects(client, frame_png, 3, args.imgsz)  # warm-up
        idle = timed_detects(client, frame_png, args.detect_requests, args.imgsz)
        job_id = client.submit_video(
            clip, imgsz=args.imgsz, frame_stride=args.frame_stride, track=True, annotate=False
        ).job_id
        while client.job(job_id).status == VideoStatus.QUEUED:
            time.sleep(POLL_S)
        busy = timed_detects(client, frame_png, args.detect_requests, args.imgsz)
        ran_throughout = client.job(job_id).status == VideoStatus.STARTED
        try:
            state = client.wait(job_id, poll_s=POLL_S)
        except JobFailed as exc:
            raise SystemExit(f"the video job ended {exc.state.status.value}: {exc.state.error}") from exc
        chunk_files = sorted(storage.job_dir(job_id).glob("chunks/*.json"))
        workers_of_chunks = [storage.read_chunk(path.parent.parent.name, int(path.stem)).worker for path in chunk_files]
    seconds = parse_time(state.ended_at) - parse_time(state.started_at)
    frames = state.progress.frames_total
    per_worker: dict[str, int] = {}
    for name in workers_of_chunks:
        per_worker[name] = per_worker.get(name, 0) + 1
    return RunResult(
        workers=workers,
        frames=frames,
        seconds=seconds,
        frames_per_s=frames / seconds if seconds > 0 else float("nan"),
        chunks_per_worker=sorted(per_worker.values(), reverse=True),
        idle_ms=idle,
        busy_ms=busy,
        video_ran_throughout=ran_throughout,
    )


def parse_time(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


def print_table(results: list[RunResult]) -> None:
    from tools.bench import percentile

    header = (
        f"{'workers':>7} {'frames':>6} {'seconds':>8} {'frames/s':>8} {'chunks/worker':>14} "
        f"{'idle p50/p95 ms':>16} {'video p50/p95 ms':>17} {'p95 ratio':>9}"
    )
    print(header)
    for result in results:
        idle95, busy95 = percentile(result.idle_ms, 0.95), percentile(result.busy_ms, 0.95)
        note = "" if result.video_ran_throughout else "  (video ended before the last request)"
        print(
            f"{result.workers:>7} {result.frames:>6} {result.seconds:>8.1f} {result.frames_per_s:>8.2f} "
            f"{'/'.join(str(count) for count in result.chunks_per_worker):>14} "
            f"{percentile(result.idle_ms, 0.5):>7.0f}/{idle95:<8.0f} {percentile(result.busy_ms, 0.5):>8.0f}/"
            f"{busy95:<8.0f} {busy95 / idle95:>9.2f}{note}",
            flush=True,
        )
