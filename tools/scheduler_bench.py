"""`masenet bench scheduler`: small frames, big frames and a video on one worker, with the shipped defaults.

A private stack (redis-server, one `masenet worker`, one `masenet serve`, the shipped weights at their own
pixel scale and views) is measured in three phases:

    alone   each small frame answered on an idle service (its reference answer and latency), big frames one at
            a time, and the video job on its own
    beside  three big frames posted at once and, 0.1 s later, the six small frames one after another, then
            the same with the six posted at once
    mixed   --small-clients clients posting small frames and --big-clients posting big frames, continuously,
            for --duration seconds, with the same video job submitted after the first seconds

It prints per class (small, big, video) p50 / p95 latency and images/s alone and mixed, how many small answers
under load differ from their reference (another count, a score off by more than 1e-4 or a box by more than
0.05 px), the ratio of the small to the big median, the video's time under load against alone, and the
small and big medians of the "beside" phase with the small answers compared to alone.
Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.bench import percentile

WARMUP_REQUESTS = 3
VIDEO_DELAY_S = 3.0


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `masenet bench scheduler`."""
    parser = bench_subparsers.add_parser(
        "scheduler",
        help="small and big frames and a video on one worker: latency per class, alone and mixed",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("--small", default="320x256", help="small frame WIDTHxHEIGHT (default 320x256)")
    parser.add_argument("--big", default="1280x1024", help="big frame WIDTHxHEIGHT (default 1280x1024)")
    parser.add_argument("--small-clients", type=int, default=8, help="clients posting small frames (default 8)")
    parser.add_argument("--big-clients", type=int, default=2, help="clients posting big frames (default 2)")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of mixed load (default 40)")
    parser.add_argument("--video-frames", type=int, default=60, help="frames of the video job (default 60)")
    parser.add_argument("--weights", type=Path, default=None, help="checkpoint (default: MASENET_WEIGHTS/shipped)")
    parser.add_argument("--device", default=None, help="MASENET_DEVICE of the worker")
    parser.add_argument("--redis-url", default=None, help="use this Redis (own prefix, cleaned up)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the clip and logs here (default: temp)")
    parser.set_defaults(func=run_bench)


@dataclass
class ClassResult:
    latencies_ms: list[float] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0

    def row(self, name: str) -> str:
        rate = self.images / self.seconds if self.seconds > 0 else float("nan")
        p50, p95 = percentile(self.latencies_ms, 0.5), percentile(self.latencies_ms, 0.95)
        return f"| {name} | {len(self.latencies_ms)} | {p50:,.0f} | {p95:,.0f} | {rate:.2f} |"


def same_answer(expected: Any, got: Any) -> bool:
    if len(expected.detections) != len(got.detections):
        return False
    for one, other in zip(expected.detections, got.detections, strict=True):
        if one.class_id != other.class_id or abs(one.score - other.score) > 1e-4:
            return False
        if max(abs(a - b) for a, b in zip(one.box, other.box, strict=True)) > 0.05:
            return False
    return True


async def timed(client: Any, png: bytes) -> tuple[float, Any]:
    started = time.perf_counter()
    answer = await client.detect(("frame.png", png))
    return (time.perf_counter() - started) * 1000.0, answer.results[0]


async def run_video(client: Any, clip: bytes) -> float:
    started = time.perf_counter()
    accepted = await client.submit_video(("clip.mp4", clip))
    state = await client.wait(accepted.job_id, poll_s=0.1, timeout_s=1800)
    if state.status.value != "finished":
        raise RuntimeError(f"the video job ended {state.status.value}: {state.error}")
    return time.perf_counter() - started


async def six_beside_three(client: Any, small: list[bytes], big: list[bytes], references: list, together: bool) -> str:
    """Three big frames posted at once and, right after, the six small frames one after another (or all at once)."""
    bigs = [asyncio.create_task(timed(client, png)) for png in big[:3]]
    await asyncio.sleep(0.1)
    if together:
        smalls = await asyncio.gather(*(timed(client, png) for png in small))
    else:
        smalls = [await timed(client, png) for png in small]
    big_ms = percentile([latency for latency, _ in await asyncio.gather(*bigs)], 0.5)
    small_ms = percentile([latency for latency, _ in smalls], 0.5)
    same = sum(same_answer(reference, answer) for reference, (_, answer) in zip(references, smalls, strict=True))
    how = "all at once" if together else "one after another"
    return (
        f"six small frames ({how}) beside three big ones: small median {small_ms:,.0f} ms, big median "
        f"{big_ms:,.0f} ms, ratio {small_ms / big_ms:.3f}, {same} of {len(smalls)} answers identical to alone"
    )


async def measure(url: str, small: list[bytes], big: list[bytes], clip: bytes, args: argparse.Namespace) -> str:
    from service.client import AsyncClient

    async with AsyncClient(url, timeout=600.0, retries=0) as client:
        for _ in range(WARMUP_REQUESTS):
            await timed(client, small[0])
            await timed(client, big[0])
        alone = {"small": ClassResult(), "big": ClassResult()}
        references = []
        for png in small:
            latency, answer = await timed(client, png)
            alone["small"].latencies_ms.append(latency)
            references.append(answer)
        for png in big[:3]:
            alone["big"].latencies_ms.append((await timed(client, png))[0])
        video_alone = await run_video(client, clip)
        beside = [await six_beside_three(client, small, big, references, together) for together in (False, True)]

        mixed = {"small": ClassResult(), "big": ClassResult()}
        differing = 0
        stop_at = time.monotonic() + args.duration

        async def send(kind: str, frames: list[bytes], offset: int) -> None:
            nonlocal differing
            position = offset
            while time.monotonic() < stop_at:
                index = position % len(frames)
                latency, answer = await timed(client, frames[index])
                mixed[kind].latencies_ms.append(latency)
                if kind == "small" and not same_answer(references[index], answer):
                    differing += 1
                position += 1

        async def video_under_load() -> float:
            await asyncio.sleep(VIDEO_DELAY_S)
            return await run_video(client, clip)

        started = time.monotonic()
        senders = [send("small", small, index) for index in range(args.small_clients)]
        senders += [send("big", big, index) for index in range(args.big_clients)]
        *_, video_mixed = await asyncio.gather(*senders, video_under_load())
        elapsed = time.monotonic() - started
    for result in mixed.values():
        result.images, result.seconds = len(result.latencies_ms), elapsed
    for result in alone.values():
        result.images, result.seconds = len(result.latencies_ms), sum(result.latencies_ms) / 1000.0
    ratio = percentile(mixed["small"].latencies_ms, 0.5) / percentile(mixed["big"].latencies_ms, 0.5)
    lines = [
        "| phase, class | requests | p50 ms | p95 ms | images/s |",
        "| --- | --- | --- | --- | --- |",
        alone["small"].row(f"alone, small {args.small}"),
        alone["big"].row(f"alone, big {args.big}"),
        mixed["small"].row(f"mixed, small {args.small} ({args.small_clients} clients)"),
        mixed["big"].row(f"mixed, big {args.big} ({args.big_clients} clients)"),
        "",
        f"video ({args.video_frames} frames {args.small}): alone {video_alone:.1f} s, under the mixed load "
        f"{video_mixed:.1f} s ({video_mixed / video_alone:.2f}x)",
        f"small / big median under load: {ratio:.3f}",
        f"small answers under load that differ from the same frame alone: {differing} of "
        f"{len(mixed['small'].latencies_ms)}",
        *beside,
    ]
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    from model.cli_args import parse_size
    from tools.launch import local_stack
    from tools.traffic import bench_weights, encode_png, synthetic_clip, synthetic_frames

    work_dir = args.work_dir or Path(tempfile.gettempdir()) / "masenet-bench-scheduler"
    work_dir.mkdir(parents=True, exist_ok=True)
    small_size, big_size = parse_size(args.small), parse_size(args.big)
    small = [encode_png(frame) for frame in synthetic_frames(*small_size, count=6, seed=1)]
    big = [encode_png(frame) for frame in synthetic_frames(*big_size, count=3, seed=2)]
    clip = synthetic_clip(work_dir, args.video_frames / 25.0, *small_size, 25.0).read_bytes()
    env = {
        "MASENET_WEIGHTS": str(bench_weights(work_dir, args.weights)),
        "MASENET_WORKER_METRICS_PORT": "0",
        "MASENET_MAX_VIDEO_SECONDS": "100000",
    }
    if args.device:
        env["MASENET_DEVICE"] = args.device
    with local_stack(
        env,
        redis_url=args.redis_url,
        prefix=f"bench-scheduler-{os.getpid()}",
        log_dir=work_dir,
        worker_name="bench-worker",
        private_storage=True,
    ) as stack:
        print(asyncio.run(measure(stack.api_url, small, big, clip, args)), flush=True)
    return 0
