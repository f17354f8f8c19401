"""`masenet bench video`: video throughput with 1 and 2 workers, and /detect latency while a video runs.

For each worker count the benchmark starts a private stack (redis-server on a free port unless
--redis-url is given, N `masenet worker` processes, one `masenet serve`), submits the clip through
`POST /jobs` and polls until it finishes. Throughput is processed frames / (ended_at - started_at) of the
job. Before the video, it measures `/detect` latency on an idle service; while the video runs, it
measures it again (sequential requests, one frame each). The bar: p95 while a video runs <= 2x idle.

Each worker gets cpu_count // workers intra-op threads so that runs with more workers do not
oversubscribe the cores. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    work_dir = args.work_dir or Path(tempfile.gettempdir()) / "masenet-bench-video"
    work_dir.mkdir(parents=True, exist_ok=True)
    clip = args.clip or make_clip(work_dir, args.seconds, args.size, args.fps)
    weights = args.weights or default_weights(work_dir)
    frame_png = first_frame_png(clip)
    print(f"clip {clip} ({describe(clip)}), weights {weights}", flush=True)
    results = []
    for workers in [int(value) for value in args.workers.split(",") if value.strip()]:
        with service_stack(args, work_dir, weights, workers) as api_url:
            results.append(measure(api_url, clip, frame_png, workers, args))
        print_table(results)
    return 0


# ------------------------------------------------------------------------------------------ material


def make_clip(work_dir: Path, seconds: float, size: str, fps: float) -> Path:
    """A synthetic infrared clip (moving small targets), cached by its parameters."""
    from model.synth.dataset import SynthConfig, write_video

    width, height = (int(value) for value in size.lower().split("x"))
    frames = round(seconds * fps)
    out_dir = work_dir / f"clip-{frames}f-{width}x{height}-{fps:g}fps"
    video = out_dir / "video.mp4"
    if not video.is_file():
        print(f"writing a {seconds:g} s {width}x{height} clip to {out_dir} ...", flush=True)
        write_video(out_dir, frames, SynthConfig(width=width, height=height), seed=0, fps=fps, progress=True)
    return video


def default_weights(work_dir: Path) -> Path:
    """MASENET_WEIGHTS or the shipped file; else a random-init masenet-n (timings are the same)."""
    from jobs.settings import Settings

    configured = Settings().weights
    if configured is not None:
        return Path(configured)
    from model.checkpoint import default_weights_path

    shipped = default_weights_path()
    if shipped.is_file():
        return shipped
    path = work_dir / "random-masenet-n.safetensors"
    if not path.is_file():
        from model.checkpoint import save_checkpoint
        from model.masenet import build_model

        print("no shipped weights: timing a random-init masenet-n (same cost per frame)", flush=True)
        save_checkpoint(path, build_model("masenet", scale="n", nc=1), class_names=["target"], imgsz=640)
    return path


def first_frame_png(clip: Path) -> bytes:
    import av
    from PIL import Image

    with av.open(str(clip)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def describe(clip: Path) -> str:
    from service.video import probe_video

    info = probe_video(clip)
    return f"{info.frames} frames, {info.width}x{info.height}, {info.fps:g} fps, {info.duration_s:.1f} s"


# --------------------------------------------------------------------------------------------- stack


@dataclass
class Stack:
    """A started private stack: its process group, the environment its children get and where their logs go."""

    group: Any  # service.launch.ProcessGroup
    env: dict[str, str]
    log_dir: Path
    api_url: str = ""
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start_worker(self, name: str) -> subprocess.Popen:
        """Start one more `masenet worker` (in the stack's group, logging to <log_dir>/<name>.log)."""
        from service.launch import masenet_command

        command = masenet_command("worker", "--name", name)
        process = self.group.start(name, command, self.env, self.log_dir / f"{name}.log")
        self.workers[name] = process
        return process


@contextlib.contextmanager
def private_stack(
    work_dir: Path,
    weights: Path,
    workers: int,
    *,
    imgsz: int,
    prefix: str,
    redis_url: str | None = None,
    device: str | None = None,
    extra_env: dict[str, str] | None = None,
    worker_name: str = "bench-worker",
) -> Iterator[Stack]:
    """Redis (private unless given), `workers` worker processes and one API; everything stopped on exit.

    With a given Redis, the keys of `prefix` are deleted on exit; the storage folder is always removed.
    """
    from service.launch import ProcessGroup, child_env, free_port, masenet_command, start_private_redis

    group = ProcessGroup()
    storage = Path(tempfile.mkdtemp(prefix="storage-", dir=work_dir))
    try:
        url = redis_url or start_private_redis(group)
        api_port = free_port()
        threads = max(1, (os.cpu_count() or 1) // workers)
        overrides = {
            "MASENET_REDIS_URL": url,
            "MASENET_QUEUE_PREFIX": prefix,
            "MASENET_STORAGE": str(storage),
            "MASENET_WEIGHTS": str(weights),
            "MASENET_IMGSZ": str(imgsz),
            "MASENET_MAX_VIDEO_SECONDS": "100000",
            "MASENET_WORKER_METRICS_PORT": "0",
            "OMP_NUM_THREADS": str(threads),
        }
        if device:
            overrides["MASENET_DEVICE"] = device
        overrides.update(extra_env or {})
        stack = Stack(group=group, env=child_env(overrides), log_dir=work_dir)
        for index in range(workers):
            stack.start_worker(f"{worker_name}-{index}")
        serve = masenet_command("serve", "--host", "127.0.0.1", "--port", str(api_port))
        group.start("api", serve, stack.env, work_dir / "api.log")
        stack.api_url = f"http://127.0.0.1:{api_port}"
        wait_ready(stack.api_url, workers, group.processes)
        yield stack
    finally:
        group.stop()
        if redis_url:
            cleanup_prefix(redis_url, prefix)
        shutil.rmtree(storage, ignore_errors=True)


@contextlib.contextmanager
def service_stack(args: argparse.Namespace, work_dir: Path, weights: Path, workers: int) -> Iterator[str]:
    """The stack of one `bench video` run; yields the API URL."""
    extra_env = {"MASENET_VIDEO_CHUNK_FRAMES": str(args.chunk_frames)} if args.chunk_frames else {}
    with private_stack(
        work_dir,
        weights,
        workers,
        imgsz=args.imgsz,
        prefix=f"bench-video-{os.getpid()}",
        redis_url=args.redis_url,
        device=args.device,
        extra_env=extra_env,
    ) as stack:
        yield stack.api_url


def wait_ready(api_url: str, workers: int, processes: list[subprocess.Popen]) -> None:
    import httpx

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            raise SystemExit("a worker or the API exited during start-up; see the logs in the work directory")
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(f"{api_url}/readyz", timeout=2.0)
            if response.status_code == 200 and len(response.json().get("workers", [])) >= workers:
                return
        time.sleep(0.5)
    raise SystemExit(f"the service was not ready with {workers} workers after {STARTUP_TIMEOUT_S:g} s")


def cleanup_prefix(redis_url: str, prefix: str) -> None:
    import redis

    connection = redis.Redis.from_url(redis_url)
    for pattern in (f"{prefix}:*", f"rq:*{prefix}*"):
        keys = list(connection.scan_iter(match=pattern, count=500))
        if keys:
            connection.delete(*keys)


# ------------------------------------------------------------------------------------------- measure


def timed_detects(client: Any, api_url: str, frame_png: bytes, count: int, imgsz: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.post(
            f"{api_url}/detect", params={"imgsz": imgsz}, files={"image": ("frame.png", frame_png, "image/png")}
        )
        response.raise_for_status()
        latencies.append((time.perf_counter() - started) * 1000.0)
    return latencies


def measure(api_url: str, clip: Path, frame_png: bytes, workers: int, args: argparse.Namespace) -> RunResult:
    import httpx

    with httpx.Client(timeout=120.0) as client:
        timed_detects(client, api_url, frame_png, 3, args.imgsz)  # warm-up
        idle = timed_detects(client, api_url, frame_png, args.detect_requests, args.imgsz)
        with open(clip, "rb") as handle:
            response = client.post(
                f"{api_url}/jobs",
                params={"imgsz": args.imgsz, "frame_stride": args.frame_stride, "track": True, "annotate": False},
                files={"video": (clip.name, handle, "video/mp4")},
            )
        response.raise_for_status()
        status_url = f"{api_url}{response.json()['status_url']}"
        state = wait_for(client, status_url, lambda state: state["status"] != "queued")
        busy = timed_detects(client, api_url, frame_png, args.detect_requests, args.imgsz)
        ran_throughout = client.get(status_url).json()["status"] == "started"
        state = wait_for(client, status_url, lambda state: state["status"] in ("finished", "failed", "canceled"))
        if state["status"] != "finished":
            raise SystemExit(f"the video job ended {state['status']}: {state['error']}")
        result = client.get(f"{status_url}/result").json()
    seconds = parse_time(state["ended_at"]) - parse_time(state["started_at"])
    frames = state["progress"]["frames_total"]
    per_worker: dict[str, int] = {}
    for chunk in result.get("chunks", []):
        per_worker[chunk["worker"]] = per_worker.get(chunk["worker"], 0) + 1
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


def wait_for(client: Any, status_url: str, done: Any) -> dict[str, Any]:
    while True:
        state = client.get(status_url).json()
        if done(state):
            return state
        time.sleep(POLL_S)


def parse_time(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


def percentile(values: list[float], fraction: float) -> float:
    import numpy as np

    return float(np.percentile(values, fraction * 100.0)) if values else float("nan")


def print_table(results: list[RunResult]) -> None:
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
