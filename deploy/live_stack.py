"""A live monitoring stack on this machine: `masenet serve`, `masenet worker` and Prometheus scraping both.

Shared by the live Prometheus test (`tests/deploy/test_prometheus_live.py`) and the dashboard renderer
(`deploy/render_dashboard.py`). The API and the worker are started by the project's launcher
(`tools.launch.local_stack`) against an existing Redis on their own DB index and queue prefix (whatever they
left there is deleted on exit); the `prometheus` binary (Debian package) scrapes both every second and evaluates
`deploy/prometheus/alerts.yml`. `live_stream` watches a fake MJPEG camera (`tools.cameras`, on 127.0.0.1, which the
stack's MASENET_STREAM_ALLOW lets in) through POST /streams. `send_traffic` is the renderer's mixed load (single and
multi-image requests, Grad-CAM, refusals, frames that fail in the worker, a video job, a live stream whose camera
vanishes for a while). Everything runs from the repository's sources; nothing here is part of the installed packages.
"""

from __future__ import annotations

import io
import math
import random
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from PIL import Image

from tools.cameras import CameraScene, MjpegCamera
from tools.launch import LaunchError, free_port, local_stack, log_tails, wait_until, wait_until_healthy
from tools.traffic import moving_square_clip, png_bytes

ROOT = Path(__file__).resolve().parents[1]
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
STARTUP_TIMEOUT_S = 120.0
CAMERA_FPS = 10.0
STREAM_FPS = 5.0
CAMERA_GAP_S = 8.0  # how long the renderer's camera vanishes: the stream reconnects
STOP_GRACE_S = 2.0  # after DELETE /streams/{id}, its worker lets go of the camera within a second


@dataclass
class LiveStack:
    api_url: str
    prometheus_url: str
    logs: dict[str, Path]
    readyz_before_worker: int  # /readyz while the API ran without a worker (503 expected)

    def log_tail(self) -> str:
        return log_tails(self.logs)


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
        raise LaunchError("the prometheus binary is not installed (Debian: apt-get install -y prometheus)")
    api_port, worker_port, prometheus_port = free_port(), free_port(), free_port()
    env = {
        "MASENET_WEIGHTS": str(weights),
        "MASENET_DEVICE": "cpu",
        "MASENET_IMGSZ": "160",
        "MASENET_WORKER_METRICS_PORT": str(worker_port),
        "MASENET_STORAGE": str(work / "storage"),
        "MASENET_TIMEOUT_S": "60",
        "MASENET_API_KEYS": None,
        "MASENET_STREAM_ALLOW": "127.0.0.1",  # the fake cameras of live_stream
        **(settings or {}),
    }
    shutil.copy(ALERT_RULES, work / "alerts.yml")
    (work / "prometheus.yml").write_text(
        yaml.safe_dump(prometheus_config(api_port, worker_port, work / "alerts.yml")), encoding="utf-8"
    )
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"

    def targets_up() -> bool:
        response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": "up"})
        if response.status_code != 200:  # 503 in plain text while the TSDB starts
            return False
        values = {sample["metric"]["job"]: sample["value"][1] for sample in response.json()["data"]["result"]}
        return values == {"masenet-api": "1", "masenet-worker": "1"}

    stack_options = {"redis_url": redis_url, "prefix": prefix, "port": api_port, "log_dir": work}
    with local_stack(env, workers=0, ready_timeout_s=None, **stack_options) as stack:
        logs = stack.logs
        wait_until_healthy(stack.api_url, STARTUP_TIMEOUT_S, stack.group.processes, logs)
        # No worker yet: readiness fails with a 503, the server error the error panels need.
        readyz_before_worker = httpx.get(f"{stack.api_url}/readyz").status_code
        stack.start_worker()
        stack.wait_ready(STARTUP_TIMEOUT_S)
        tsdb = [f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}"]
        listen = f"--web.listen-address=127.0.0.1:{prometheus_port}"
        logs["prometheus"] = work / "prometheus.log"
        stack.group.start("prometheus", [prometheus, *tsdb, listen], stack.env, logs["prometheus"], cwd=work)
        wait_until(targets_up, STARTUP_TIMEOUT_S, "Prometheus to scrape both targets", logs=logs)
        yield LiveStack(stack.api_url, prometheus_url, logs, readyz_before_worker)


# ------------------------------------------------------------------------------------------ live stream


@dataclass
class LiveStream:
    camera: MjpegCamera
    stream_id: str
    api_url: str

    def state(self) -> dict[str, Any]:
        return httpx.get(f"{self.api_url}/streams/{self.stream_id}", timeout=30).json()

    def wait_processing(self, timeout_s: float = STARTUP_TIMEOUT_S) -> dict[str, Any]:
        """Wait until a worker runs the stream and has processed a frame; returns the stream's state."""
        return wait_until(
            lambda: (state := self.state())["frames_processed"] > 0 and state["status"] == "running" and state,
            timeout_s,
            f"stream {self.stream_id} to process frames",
        )


@contextmanager
def live_stream(api_url: str) -> Iterator[LiveStream]:
    """A fake MJPEG camera (CAMERA_FPS) watched through POST /streams at STREAM_FPS; stopped with DELETE on exit."""
    with MjpegCamera(CameraScene(), fps=CAMERA_FPS) as camera:
        answer = httpx.post(f"{api_url}/streams", json={"url": camera.url, "fps": STREAM_FPS}, timeout=30)
        if answer.status_code != 201:
            raise LaunchError(f"POST /streams answered {answer.status_code}: {answer.text}")
        stream = LiveStream(camera, answer.json()["stream_id"], api_url)
        try:
            yield stream
        finally:
            httpx.delete(f"{api_url}/streams/{stream.stream_id}", timeout=30)
            time.sleep(STOP_GRACE_S)  # the worker lets go before the camera closes: no reconnect counted


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
    at 8 per second (a backlog, then 503s), one video job, and a live stream all along whose camera vanishes for
    CAMERA_GAP_S at half time (stopped at the end); returns how many answers of each kind and status."""
    rng = random.Random(0)
    frames = [png_bytes(96 + 32 * (i % 4), 96 + 16 * (i % 3), seed=i) for i in range(8)]
    clip, answers, video_at = moving_square_clip(), [], 0.3 * seconds
    surges = [(at, at + 10) for at in (0.25 * seconds, 0.7 * seconds)]
    with (
        httpx.Client(base_url=api_url, timeout=120) as client,
        ThreadPoolExecutor(max_workers=32) as pool,
        live_stream(api_url) as stream,
    ):
        camera_events = [(0.5 * seconds, stream.camera.drop), (0.5 * seconds + CAMERA_GAP_S, stream.camera.resume)]
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            while camera_events and elapsed >= camera_events[0][0]:
                camera_events.pop(0)[1]()
            if video_at is not None and elapsed >= video_at:
                answers.append(("video", pool.submit(video_job, client, clip)))
                video_at = None
            surge = any(begin <= elapsed < end for begin, end in surges)
            kind = "multi" if surge else rng.choices(list(KINDS), list(KINDS.values()))[0]
            params, files = request_files(kind, rng, frames)
            answers.append((kind, pool.submit(client.post, "/detect", params=params, files=files)))
            time.sleep(rng.expovariate(8.0 if surge else 2.0 + 1.5 * math.sin(2 * math.pi * elapsed / 60)))
        counts = Counter(
            answer if isinstance(answer := future.result(), str) else f"{kind} {answer.status_code}"
            for kind, future in answers
        )
        state = stream.state()
        counts[f"stream {state['status']}, {state['frames_processed']} frames, {state['reconnects']} reconnects"] += 1
        return counts
