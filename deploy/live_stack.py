"""A live monitoring stack on this machine: `masenet serve`, `masenet worker` and Prometheus scraping both.

Shared by the live Prometheus test (`tests/deploy/test_prometheus_live.py`) and the dashboard renderer
(`deploy/render_dashboard.py`). The API and the worker run against an existing Redis on their own DB index and
queue prefix (`clean_redis` removes what they left there); the `prometheus` binary (Debian package) scrapes both
every second and evaluates `deploy/prometheus/alerts.yml`. `send_traffic` is the renderer's mixed load (single and
multi-image requests, Grad-CAM, refusals, frames that fail in the worker, a video job). Everything runs from the
repository's sources; nothing here is part of the installed packages.
"""

from __future__ import annotations

import io
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
STARTUP_TIMEOUT_S = 120.0


class StackError(RuntimeError):
    """A process of the stack did not start or did not answer in time (the message carries the logs' tails)."""


@dataclass
class LiveStack:
    api_url: str
    prometheus_url: str
    logs: dict[str, Path]
    readyz_before_worker: int  # /readyz while the API ran without a worker (503 expected)

    def log_tail(self) -> str:
        return log_tails(self.logs)


def log_tails(logs: Mapping[str, Path], lines: int = 40) -> str:
    """The last lines of each process log that exists, for failure messages."""
    parts = []
    for name, path in logs.items():
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
            parts.append(f"--- {name} ---\n" + "\n".join(text))
    return "\n".join(parts)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png_bytes(width: int, height: int, seed: int) -> bytes:
    """A dark 8-bit grayscale frame with a few bright specks (small targets)."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 40, size=(height, width), dtype=np.uint8)
    for _ in range(3):
        y, x = rng.integers(4, height - 4), rng.integers(4, width - 4)
        frame[y - 1 : y + 2, x - 1 : x + 2] = 250
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, logs: Mapping[str, Path] | None = None) -> Any:
    """Call `check` until it returns something true; StackError with the logs' tails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:  # not up yet, or not answering JSON yet
            last_error = exc
        time.sleep(0.25)
    raise StackError(f"timed out waiting for {what} (last error: {last_error})\n{log_tails(logs or {})}")


def start(command: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen:
    with log.open("w", encoding="utf-8") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, env=dict(env), stdout=handle, stderr=subprocess.STDOUT, cwd=log.parent)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def clean_redis(redis_url: str, prefix: str) -> None:
    """Delete the queues, jobs, results and worker registrations that a stack with `prefix` left in Redis."""
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        doomed = list(client.scan_iter(match=f"*{prefix}*", count=500))
        queues = {f"{prefix}:images", f"{prefix}:video"}
        job_ids, job_sets = [], []
        for key in client.scan_iter(match="rq:job:*", count=500):
            if client.type(key) != "hash":  # a job's dependency set, e.g. of a video's finalize job
                job_sets.append(key)
            elif client.hget(key, "origin") in queues:
                doomed.append(key)
                job_ids.append(key.removeprefix("rq:job:"))
        doomed.extend(f"rq:results:{job_id}" for job_id in job_ids)
        doomed.extend(key for key in job_sets if any(job_id in key for job_id in job_ids))
        # The worker's rq registration, its results and the queue names rq keeps in its global sets.
        state_keys = f"{prefix}:workers:"
        worker_names = {key.removeprefix(state_keys) for key in doomed if key.startswith(state_keys)}
        for worker_key in client.scan_iter(match="rq:worker:*", count=500):
            if client.type(worker_key) == "hash" and prefix in (client.hget(worker_key, "queues") or ""):
                worker_names.add(worker_key.removeprefix("rq:worker:"))
        for worker_name in worker_names:
            client.srem("rq:workers", f"rq:worker:{worker_name}")
            doomed.append(f"rq:worker:{worker_name}")
        for key in client.scan_iter(match="rq:results:*", count=500):
            latest = client.xrevrange(key, count=1)
            if latest and latest[0][1].get("worker_name") in worker_names:
                doomed.append(key)
        for member in client.smembers("rq:queues"):
            if prefix in member:
                client.srem("rq:queues", member)
        if doomed:
            client.delete(*set(doomed))
    finally:
        client.close()


def make_checkpoint(path: Path, imgsz: int = 160) -> Path:
    """A random-init masenet-n with one class (seed 0), saved the way shipped weights are."""
    import torch

    from model import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("masenet", scale="n", nc=1)
    return save_checkpoint(path, model, class_names=["target"], imgsz=imgsz, provenance={"purpose": "metrics test"})


def prometheus_config(api_port: int, worker_port: int, rules: Path) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "masenet-api", "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}]},
            {"job_name": "masenet-worker", "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]},
        ],
    }


@contextmanager
def live_stack(
    work: Path, redis_url: str, prefix: str, weights: Path, settings: Mapping[str, str] | None = None
) -> Iterator[LiveStack]:
    """Start the API, then (after one /readyz without a worker) a CPU worker, then Prometheus; stop all on exit.

    `settings` are extra `MASENET_*` variables for the API and the worker. Logs and the TSDB go under `work`.
    """
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        raise StackError("the prometheus binary is not installed (Debian: apt-get install -y prometheus)")
    api_port, worker_port, prometheus_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "MASENET_REDIS_URL": redis_url,
        "MASENET_QUEUE_PREFIX": prefix,
        "MASENET_WEIGHTS": str(weights),
        "MASENET_DEVICE": "cpu",
        "MASENET_IMGSZ": "160",
        "MASENET_WORKER_METRICS_PORT": str(worker_port),
        "MASENET_STORAGE": str(work / "storage"),
        "MASENET_TIMEOUT_S": "60",
        **(settings or {}),
    }
    env.pop("MASENET_API_KEYS", None)
    shutil.copy(ALERT_RULES, work / "alerts.yml")
    (work / "prometheus.yml").write_text(
        yaml.safe_dump(prometheus_config(api_port, worker_port, work / "alerts.yml")), encoding="utf-8"
    )
    logs = {name: work / f"{name}.log" for name in ("api", "worker", "prometheus")}
    processes: list[subprocess.Popen] = []
    api_url = f"http://127.0.0.1:{api_port}"
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"

    def targets_up() -> bool:
        response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": "up"})
        if response.status_code != 200:  # 503 in plain text while the TSDB starts
            return False
        values = {sample["metric"]["job"]: sample["value"][1] for sample in response.json()["data"]["result"]}
        return values == {"masenet-api": "1", "masenet-worker": "1"}

    try:
        cli = [sys.executable, "-m", "service.cli"]
        processes.append(start([*cli, "serve", "--host", "127.0.0.1", "--port", str(api_port)], env, logs["api"]))
        wait_until(lambda: httpx.get(f"{api_url}/healthz").status_code == 200, STARTUP_TIMEOUT_S, "the API", logs)
        # No worker yet: readiness fails with a 503, the server error the error panels need.
        readyz_before_worker = httpx.get(f"{api_url}/readyz").status_code
        processes.append(start([*cli, "worker"], env, logs["worker"]))
        wait_until(lambda: httpx.get(f"{api_url}/readyz").status_code == 200, STARTUP_TIMEOUT_S, "a worker", logs)
        tsdb = [f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}"]
        listen = f"--web.listen-address=127.0.0.1:{prometheus_port}"
        processes.append(start([prometheus, *tsdb, listen], env, logs["prometheus"]))
        wait_until(targets_up, STARTUP_TIMEOUT_S, "Prometheus to scrape both targets", logs)
        yield LiveStack(api_url, prometheus_url, logs, readyz_before_worker)
    finally:
        for process in reversed(processes):
            stop(process)
        clean_redis(redis_url, prefix)


# ------------------------------------------------------------------------------------------ mixed traffic

KINDS = {"single": 50, "multi": 18, "gradcam": 8, "corrupt": 5, "pixels": 4, "params": 4, "truncated": 5}
STACK_SETTINGS = {"MASENET_MAX_PIXELS": "1000000", "MASENET_MAX_QUEUE": "16"}  # cheap 413s; 503s in bursts


def request_files(kind: str, rng: random.Random, frames: list[bytes]) -> tuple[dict[str, str], list[Any]]:
    """Query parameters and multipart files of one /detect request of `kind`."""
    images = [rng.choice(frames) for _ in range(rng.randint(2, 4) if kind == "multi" else 1)]
    if kind == "corrupt":
        images = [b"this is not an image at all"]
    elif kind == "pixels":  # 1.2 megapixels, above MASENET_MAX_PIXELS; the PNG itself is small
        buffer = io.BytesIO()
        Image.new("L", (1200, 1000)).save(buffer, format="PNG")
        images = [buffer.getvalue()]
    elif kind == "truncated":  # the header passes the API's check, the pixels fail in the worker
        images = [images[0][: len(images[0]) // 2]]
    params = {"gradcam": "true"} if kind == "gradcam" else {"conf": "2"} if kind == "params" else {}
    return params, [("image", (f"{kind}-{index}.png", data, "image/png")) for index, data in enumerate(images)]


def tiny_video(frames: int = 200, width: int = 160, height: int = 128) -> bytes:
    """An H.264 MP4 (PyAV) of a bright 4-pixel square crossing a dark frame."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            image = np.full((height, width, 3), 16, dtype=np.uint8)
            x = int(8 + 0.7 * index) % (width - 8)
            image[60:64, x : x + 4] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def video_job(client: httpx.Client, clip: bytes) -> str:
    """POST /jobs, poll until the job ends (GET /jobs/{id} counts it finished), read its result."""
    accepted = client.post("/jobs", files={"video": ("clip.mp4", clip, "video/mp4")})
    if accepted.status_code != 202:
        return f"video {accepted.status_code}"
    job_id, state = accepted.json()["job_id"], "queued"
    deadline = time.monotonic() + 180
    while state not in ("finished", "failed", "canceled") and time.monotonic() < deadline:
        time.sleep(1)
        state = client.get(f"/jobs/{job_id}").json()["status"]
    return f"video {state}, result {client.get(f'/jobs/{job_id}/result').status_code}"


def send_traffic(api_url: str, seconds: float) -> Counter[str]:
    """Mixed /detect requests at 0.5 to 3.5 per second (a one-minute wave), two 10 s surges of multi-image requests
    at 8 per second (a backlog, then 503s), and one video job; returns how many answers of each kind and status."""
    rng = random.Random(0)
    frames = [png_bytes(96 + 32 * (i % 4), 96 + 16 * (i % 3), seed=i) for i in range(8)]
    clip, answers, video_at = tiny_video(), [], 0.3 * seconds
    surges = [(at, at + 10) for at in (0.25 * seconds, 0.7 * seconds)]
    with httpx.Client(base_url=api_url, timeout=120) as client, ThreadPoolExecutor(max_workers=32) as pool:
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            if video_at is not None and elapsed >= video_at:
                answers.append(("video", pool.submit(video_job, client, clip)))
                video_at = None
            surge = any(begin <= elapsed < end for begin, end in surges)
            kind = "multi" if surge else rng.choices(list(KINDS), list(KINDS.values()))[0]
            params, files = request_files(kind, rng, frames)
            answers.append((kind, pool.submit(client.post, "/detect", params=params, files=files)))
            time.sleep(rng.expovariate(8.0 if surge else 2.0 + 1.5 * math.sin(2 * math.pi * elapsed / 60)))
        return Counter(
            answer if isinstance(answer := future.result(), str) else f"{kind} {answer.status_code}"
            for kind, future in answers
        )
