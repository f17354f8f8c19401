"""`masenet bench load`: a mixed workload for a set time, optionally killing workers along the way.

Clients (asyncio, `service.client.AsyncClient` without retries) send single-image, multi-image and Grad-CAM
requests to POST /detect, each picked by weight, while video jobs run through POST /jobs (a video counts as one
request, from the POST until its status is finished, failed or canceled; a finished one must also answer
GET /jobs/{id}/result with 200).
After --duration no new work is sent and the run drains: image requests end with their answer or their
client timeout, video jobs with a final status or the drain timeout.

Accepted but unanswered: an image request that got no HTTP answer at all (the client timeout passed, or the
connection dropped after the request was sent), or a video job that was accepted (202) and had no final
status by the end of the drain. Any such request makes the exit code 1. An HTTP error (503 queue full, 500
naming a job of a killed worker, 504) is an answer: it counts under the errors, by kind.

With --kill-every S (self-started stack only), a random worker that is alive and ready is SIGKILLed every
S seconds and a replacement is started. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools.load_report import (
    IMAGE_KINDS,
    KINDS,
    Kill,
    Outcome,
    error_label,
    exception_label,
    format_failures,
    format_kills,
    format_table,
)

if TYPE_CHECKING:
    from service.client import AsyncClient

DEFAULT_MIX = "single=6,multi=2,gradcam=1,video=1"
MULTI_IMAGES = 4
IMAGES_PER_REQUEST = {"single": 1, "multi": MULTI_IMAGES, "gradcam": 1}
ANSWER_MARGIN_S = 30.0  # client timeout of an image request = MASENET_TIMEOUT_S + this
PROGRESS_S = 10.0
POLL_S = 0.5
CLIP_FPS = 25.0
READY_WATCH_S = 300.0


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `masenet bench load`."""
    parser = bench_subparsers.add_parser(
        "load",
        help="mixed load (single, multi-image, Grad-CAM, video) for a set time, optionally killing workers",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("--url", default=None, help="a running service; default: start Redis, workers and the API")
    parser.add_argument("--workers", type=int, default=2, help="self-started workers (default 2)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load before draining (default 60)")
    parser.add_argument("--concurrency", type=int, default=8, help="image clients (default 8)")
    parser.add_argument(
        "--mix",
        default=DEFAULT_MIX,
        help=f"weights of single, multi ({MULTI_IMAGES} images) and gradcam; video=N keeps N video jobs running "
        f"(default {DEFAULT_MIX})",
    )
    parser.add_argument("--size", default="320x256", help="frame and clip WIDTHxHEIGHT (default 320x256)")
    parser.add_argument("--imgsz", type=int, default=320, help="inference size sent with each request (default 320)")
    parser.add_argument("--clip-seconds", type=float, default=3.0, help="length of the generated clip (default 3)")
    parser.add_argument("--weights", type=Path, default=None, help="checkpoint (default: MASENET_WEIGHTS/shipped)")
    parser.add_argument("--device", default=None, help="MASENET_DEVICE for self-started workers")
    parser.add_argument("--kill-every", type=float, default=None, help="SIGKILL a worker every S seconds")
    parser.add_argument("--redis-url", default=None, help="self-started stack: this Redis (own prefix, cleaned up)")
    parser.add_argument(
        "--request-timeout", type=float, default=None, help="image client timeout (default MASENET_TIMEOUT_S + 30)"
    )
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="most seconds to wait for videos")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the clip and logs here (default: temp)")
    parser.add_argument("--api-key", default=None, help="bearer key for a service with MASENET_API_KEYS")
    parser.add_argument("--seed", type=int, default=0, help="seed for frames, request kinds and kill victims")
    parser.set_defaults(func=run_bench)


# ------------------------------------------------------------------------------------------- helpers


def parse_mix(text: str) -> dict[str, int]:
    """`single=6,multi=2,gradcam=1,video=1` -> weights per kind (kinds left out are 0)."""
    mix = dict.fromkeys(KINDS, 0)
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        kind, _, value = part.partition("=")
        if kind.strip() not in mix or not value.strip().isdigit():
            raise ValueError(f"--mix: expected KIND=N with KIND one of {', '.join(KINDS)}, got {part!r}")
        mix[kind.strip()] = int(value)
    if not any(mix.values()):
        raise ValueError("--mix: every weight is 0")
    return mix


@dataclass
class LoadRun:
    """What the clients, the killer and the progress printer share."""

    started: float
    stop_at: float
    outcomes: list[Outcome] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    in_flight: Counter = field(default_factory=Counter)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def sending(self) -> bool:
        return time.monotonic() < self.stop_at


# ------------------------------------------------------------------------------------------- clients


async def send_detect(client: AsyncClient, kind: str, payloads: list[bytes], imgsz: int, rng: random.Random) -> Outcome:
    import httpx

    from service.client import ApiError

    count = MULTI_IMAGES if kind == "multi" else 1
    images = [(f"{kind}-{index}.png", rng.choice(payloads)) for index in range(count)]
    started = time.perf_counter()
    try:
        answer = await client.detect(images, imgsz=imgsz, gradcam=kind == "gradcam")
    except httpx.HTTPError as exc:
        label, unanswered = exception_label(exc)
        return Outcome(kind, time.perf_counter() - started, label, unanswered, f"{type(exc).__name__}: {exc}")
    except ApiError as exc:
        return Outcome(kind, time.perf_counter() - started, error_label(exc.status_code, exc.detail), detail=exc.detail)
    seconds = time.perf_counter() - started
    results = answer.results
    if len(results) != count or (kind == "gradcam" and not all(result.gradcam for result in results)):
        return Outcome(kind, seconds, "200 incomplete results", detail=f"{len(results)} results for {count} images")
    return Outcome(kind, seconds)


async def image_client(
    client: AsyncClient, run: LoadRun, mix: dict[str, int], payloads: list[bytes], imgsz: int, seed: int
) -> None:
    rng = random.Random(seed)
    kinds = [kind for kind in IMAGE_KINDS if mix[kind]]
    weights = [mix[kind] for kind in kinds]
    while kinds and run.sending():
        kind = rng.choices(kinds, weights)[0]
        run.in_flight[kind] += 1
        try:
            run.outcomes.append(await send_detect(client, kind, payloads, imgsz, rng))
        finally:
            run.in_flight[kind] -= 1


async def video_job(client: AsyncClient, clip: Path, imgsz: int, deadline: float) -> Outcome:
    """POST /jobs, poll until a final status (or `deadline`), read the result, then delete the job."""
    import httpx

    from jobs.video import JobState, VideoStatus
    from service.client import ApiError

    started = time.perf_counter()
    try:
        accepted = await client.submit_video(clip, imgsz=imgsz, track=True)
    except httpx.HTTPError as exc:
        label, unanswered = exception_label(exc)
        return Outcome("video", time.perf_counter() - started, label, unanswered, f"{type(exc).__name__}: {exc}")
    except ApiError as exc:
        label = error_label(exc.status_code, exc.detail)
        return Outcome("video", time.perf_counter() - started, label, detail=exc.detail)
    job_id = accepted.job_id
    try:
        state: JobState | None = None
        while state is None or not state.status.final:
            if time.monotonic() > deadline:
                status = state.status.value if state is not None else VideoStatus.QUEUED.value
                detail = f"job {job_id} still {status} at the end of the drain"
                return Outcome("video", time.perf_counter() - started, "video never ended", True, detail)
            await asyncio.sleep(POLL_S)
            try:  # a poll that fails is retried; only the deadline ends it
                state = await client.job(job_id)
            except ApiError as exc:
                if exc.status_code == 404:
                    return Outcome("video", time.perf_counter() - started, "404 video job lost", detail=exc.detail)
            except httpx.HTTPError:
                pass
        seconds = time.perf_counter() - started
        if state.status != VideoStatus.FINISHED:
            return Outcome("video", seconds, f"video {state.status.value}", detail=f"job {job_id}: {state.error}")
        try:
            await client.result(job_id)
        except ApiError as exc:
            return Outcome("video", seconds, "result " + error_label(exc.status_code, exc.detail), detail=exc.detail)
        except httpx.HTTPError as exc:
            label, unanswered = exception_label(exc)
            return Outcome("video", seconds, "result " + label, unanswered, f"{type(exc).__name__}: {exc}")
        return Outcome("video", seconds)
    finally:
        with contextlib.suppress(httpx.HTTPError, ApiError):
            await client.cancel(job_id)  # cancels a stuck job and frees its storage either way


async def video_client(client: AsyncClient, run: LoadRun, clip: Path, imgsz: int, deadline: float) -> None:
    while run.sending():
        run.in_flight["video"] += 1
        try:
            run.outcomes.append(await video_job(client, clip, imgsz, deadline))
        finally:
            run.in_flight["video"] -= 1


async def progress(run: LoadRun) -> None:
    while True:
        await asyncio.sleep(PROGRESS_S)
        done = len(run.outcomes)
        errors = sum(outcome.error is not None and not outcome.unanswered for outcome in run.outcomes)
        lost = sum(outcome.unanswered for outcome in run.outcomes)
        phase = "" if run.sending() else f", draining {sum(run.in_flight.values())} in flight"
        print(
            f"[{run.elapsed():6.0f} s] {done} requests done, {errors} errors, {lost} unanswered, "
            f"{len(run.kills)} kills{phase}",
            flush=True,
        )


# -------------------------------------------------------------------------------------------- killer


class WorkerKiller:
    """SIGKILLs a random live, ready worker of a self-started stack every `every_s` and starts a replacement."""

    def __init__(self, stack: Any, worker_name: str, every_s: float, seed: int) -> None:
        self.stack = stack
        self.worker_name = worker_name
        self.every_s = every_s
        self.rng = random.Random(seed)
        self.started = len(stack.workers)
        self.watchers: list[asyncio.Task] = []

    async def ready_workers(self, client: AsyncClient) -> list[str]:
        """Workers with a loaded model; none while the service is not ready (503) or does not answer."""
        import httpx

        from service.client import ApiError

        with contextlib.suppress(httpx.HTTPError, ApiError, ValueError):
            return (await client.ready()).workers
        return []

    async def run(self, client: AsyncClient, run: LoadRun) -> None:
        next_at = run.started + self.every_s
        while next_at < run.stop_at:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += self.every_s
            ready = set(await self.ready_workers(client))
            alive = sorted(name for name, process in self.stack.workers.items() if process.poll() is None)
            candidates = [name for name in alive if name in ready]
            if not candidates:
                print(f"[{run.elapsed():6.0f} s] no live worker is ready: kill skipped", flush=True)
                continue
            victim = self.rng.choice(candidates)
            process = self.stack.workers[victim]
            process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(process.wait)
            replacement = f"{self.worker_name}-{self.started}"
            self.started += 1
            self.stack.start_worker(replacement)
            kill = Kill(at_s=run.elapsed(), victim=victim, replacement=replacement)
            run.kills.append(kill)
            print(f"[{kill.at_s:6.1f} s] SIGKILL {victim} (pid {process.pid}); started {replacement}", flush=True)
            self.watchers.append(asyncio.create_task(self.watch_ready(client, run, kill)))

    async def watch_ready(self, client: AsyncClient, run: LoadRun, kill: Kill) -> None:
        deadline = time.monotonic() + READY_WATCH_S
        while time.monotonic() < deadline:
            if kill.replacement in await self.ready_workers(client):
                kill.ready_after_s = run.elapsed() - kill.at_s
                print(f"[{run.elapsed():6.1f} s] {kill.replacement} ready after {kill.ready_after_s:.1f} s", flush=True)
                return
            await asyncio.sleep(POLL_S)


# ------------------------------------------------------------------------------------------------ run


def start_stack(
    args: argparse.Namespace, work_dir: Path, resources: contextlib.ExitStack
) -> tuple[str, WorkerKiller | None]:
    """The self-started stack (tools.launch.local_stack, stopped with `resources`); its URL and killer."""
    from tools.launch import local_stack
    from tools.traffic import bench_weights
    from tools.video_bench import bench_env

    weights = bench_weights(work_dir, args.weights)
    prefix = f"bench-load-{os.getpid()}"  # worker names carry it too: rq refuses a name still alive
    stack = resources.enter_context(
        local_stack(
            bench_env(weights, args.imgsz, args.workers, args.device),
            workers=args.workers,
            redis_url=args.redis_url,
            prefix=prefix,
            log_dir=work_dir,
            worker_name=f"{prefix}-worker",
            private_storage=True,
        )
    )
    killer = WorkerKiller(stack, f"{prefix}-worker", args.kill_every, args.seed) if args.kill_every else None
    print(f"started {args.workers} workers and the API at {stack.api_url} (weights {weights})", flush=True)
    return stack.api_url, killer


async def drive(
    url: str,
    args: argparse.Namespace,
    mix: dict[str, int],
    payloads: list[bytes],
    clip: Path | None,
    killer: WorkerKiller | None,
) -> tuple[LoadRun, float]:
    """Run the load for args.duration, drain, and return the run and its wall-clock seconds."""
    import httpx

    from service.client import AsyncClient

    connections = args.concurrency + 2 * mix["video"] + 4
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    # retries=0: every 503 and 429 is an answer to count, not something to wait out
    timeout = httpx.Timeout(args.request_timeout, connect=10.0, pool=None)
    async with AsyncClient(url, api_key=args.api_key, timeout=timeout, retries=0, limits=limits) as client:
        started = time.monotonic()
        run = LoadRun(started=started, stop_at=started + args.duration)
        video_deadline = run.stop_at + args.drain_timeout
        clients = [
            image_client(client, run, mix, payloads, args.imgsz, args.seed * 1000 + index)
            for index in range(args.concurrency)
        ]
        if clip is not None:
            clients += [video_client(client, run, clip, args.imgsz, video_deadline) for _ in range(mix["video"])]
        helpers = [asyncio.create_task(progress(run))]
        if killer is not None:
            helpers.append(asyncio.create_task(killer.run(client, run)))
        try:
            await asyncio.gather(*clients)
            seconds = time.monotonic() - started
            if killer is not None and killer.watchers:  # replacements still loading get a moment to report ready
                await asyncio.wait(killer.watchers, timeout=max(0.0, video_deadline - time.monotonic()))
        finally:
            for task in helpers + (killer.watchers if killer is not None else []):
                task.cancel()
    return run, seconds


def run_bench(args: argparse.Namespace) -> int:
    from jobs.settings import Settings
    from model.cli_args import parse_size
    from tools.traffic import encode_png, synthetic_clip, synthetic_frames

    mix = parse_mix(args.mix)
    width, height = parse_size(args.size)
    if args.url and args.kill_every:
        raise SystemExit("--kill-every needs the self-started stack: leave out --url")
    if args.workers < 1 or args.concurrency < 0 or (args.kill_every is not None and args.kill_every <= 0):
        raise SystemExit("--workers must be at least 1, --concurrency at least 0 and --kill-every above 0")
    if args.request_timeout is None:
        args.request_timeout = Settings().timeout_s + ANSWER_MARGIN_S
    payloads = [encode_png(frame) for frame in synthetic_frames(width, height, seed=args.seed)]
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # httpx logs every request at INFO
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    try:
        with contextlib.ExitStack() as resources:
            work_dir = args.work_dir
            if work_dir is None:
                work_dir = Path(resources.enter_context(tempfile.TemporaryDirectory(prefix="masenet-bench-load-")))
            work_dir.mkdir(parents=True, exist_ok=True)
            clip = synthetic_clip(work_dir, args.clip_seconds, width, height, CLIP_FPS) if mix["video"] else None
            url, killer = args.url, None
            if url is None:
                url, killer = start_stack(args, work_dir, resources)
            print(
                f"load: {args.duration:g} s, {args.concurrency} image clients, mix {args.mix}, {width}x{height} "
                f"frames, imgsz {args.imgsz}" + (f", a worker killed every {args.kill_every:g} s" if killer else ""),
                flush=True,
            )
            run, seconds = asyncio.run(drive(url, args, mix, payloads, clip, killer))
    finally:
        signal.signal(signal.SIGTERM, previous)
    unanswered = sum(outcome.unanswered for outcome in run.outcomes)
    images = sum(IMAGES_PER_REQUEST.get(outcome.kind, 0) for outcome in run.outcomes if outcome.error is None)
    print(
        f"\n{len(run.outcomes)} requests in {seconds:.1f} s (load {args.duration:g} s, then drain); "
        f"{images} images answered ok ({images / seconds:.2f} img/s)"
    )
    print(format_table(run.outcomes, seconds))
    print(format_failures(run.outcomes))
    print(format_kills(run.kills))
    print(f"ACCEPTED BUT UNANSWERED: {unanswered}" + ("  (must be 0)" if unanswered else ""), flush=True)
    return 1 if unanswered else 0
