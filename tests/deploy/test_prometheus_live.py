"""Every dashboard query returns data from a real Prometheus scraping a real API and a real worker.

The test starts `masenet serve` and `masenet worker` against the local Redis (own DB index and queue prefix,
cleaned up afterwards) with a tiny random-init checkpoint, and the `prometheus` binary (Debian package) with
a 1 s scrape interval on both. It sends traffic that produces every series the dashboard reads (successful
and refused /detect requests, a Grad-CAM request, a frame that fails inside the worker, a 503 from /readyz
while no worker is up), waits for the scrapes, then runs each panel's query through `/api/v1/query`.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.deploy.test_deploy_files import PROMETHEUS_DIR, dashboard_queries

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/14"
STARTUP_TIMEOUT_S = 120.0
NEVER = "0001-01-01T00:00:00Z"  # Prometheus' lastEvaluation of a rule not evaluated yet
# Panels that cannot have data without a GPU: the worker reports NVML figures only on CUDA.
GPU_ONLY_QUERIES = {
    "GPU utilisation [A]",
    "GPU memory [A]",
    "GPU memory [B]",
}


@dataclass
class Stack:
    api_url: str
    prometheus_url: str
    logs: dict[str, Path]
    readyz_before_worker: int
    statuses: dict[str, int]

    def log_tail(self) -> str:
        return log_tails(self.logs)


def log_tails(logs: dict[str, Path], lines: int = 40) -> str:
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


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, stack_logs: dict[str, Path] | None = None) -> Any:
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
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error})\n{log_tails(stack_logs or {})}")


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = log.open("w", encoding="utf-8")
    return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=log.parent)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def clean_redis(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        doomed = list(client.scan_iter(match=f"*{prefix}*", count=500))
        queues = {f"{prefix}:images", f"{prefix}:video"}
        job_ids = []
        for key in client.scan_iter(match="rq:job:*", count=500):
            if client.hget(key, "origin") in queues:
                doomed.append(key)
                job_ids.append(key.removeprefix("rq:job:"))
        doomed.extend(f"rq:results:{job_id}" for job_id in job_ids)
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


def make_checkpoint(path: Path) -> Path:
    from model import build_model, save_checkpoint

    model = build_model("masenet", scale="n", nc=1)
    return save_checkpoint(path, model, class_names=["target"], imgsz=160, provenance={"purpose": "metrics test"})


def prometheus_config(api_port: int, worker_port: int, rules: Path) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "masenet-api", "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}]},
            {"job_name": "masenet-worker", "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}]},
        ],
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("the prometheus binary is not installed (Debian: apt-get install -y prometheus)")
    work = tmp_path_factory.mktemp("prometheus-live")
    prefix = f"masenet-prom-{uuid.uuid4().hex[:8]}"
    api_port, worker_port, prometheus_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "MASENET_REDIS_URL": REDIS_URL,
        "MASENET_QUEUE_PREFIX": prefix,
        "MASENET_WEIGHTS": str(make_checkpoint(work / "tiny.safetensors")),
        "MASENET_DEVICE": "cpu",
        "MASENET_IMGSZ": "160",
        "MASENET_WORKER_METRICS_PORT": str(worker_port),
        "MASENET_STORAGE": str(work / "storage"),
        "MASENET_TIMEOUT_S": "60",
    }
    env.pop("MASENET_API_KEYS", None)
    shutil.copy(PROMETHEUS_DIR / "alerts.yml", work / "alerts.yml")
    (work / "prometheus.yml").write_text(
        yaml.safe_dump(prometheus_config(api_port, worker_port, work / "alerts.yml")), encoding="utf-8"
    )
    logs = {name: work / f"{name}.log" for name in ("api", "worker", "prometheus")}
    processes: list[subprocess.Popen] = []
    api_url = f"http://127.0.0.1:{api_port}"
    try:
        try:
            cli = [sys.executable, "-m", "service.cli"]
            processes.append(start([*cli, "serve", "--host", "127.0.0.1", "--port", str(api_port)], env, logs["api"]))
            wait_until(lambda: httpx.get(f"{api_url}/healthz").status_code == 200, STARTUP_TIMEOUT_S, "the API", logs)
            # No worker yet: readiness fails with a 503, the server error the error panels need.
            readyz_before_worker = httpx.get(f"{api_url}/readyz").status_code
            processes.append(start([*cli, "worker"], env, logs["worker"]))
            wait_until(lambda: httpx.get(f"{api_url}/readyz").status_code == 200, STARTUP_TIMEOUT_S, "a worker", logs)
            prometheus_url = f"http://127.0.0.1:{prometheus_port}"
            processes.append(
                start(
                    [
                        prometheus,
                        f"--config.file={work / 'prometheus.yml'}",
                        f"--storage.tsdb.path={work / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    ],
                    env,
                    logs["prometheus"],
                )
            )

            def targets_up() -> bool:
                response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": "up"})
                if response.status_code != 200:  # 503 in plain text while the TSDB starts
                    return False
                answer = response.json()
                values = {sample["metric"]["job"]: sample["value"][1] for sample in answer["data"]["result"]}
                return values == {"masenet-api": "1", "masenet-worker": "1"}

            wait_until(targets_up, STARTUP_TIMEOUT_S, "Prometheus to scrape both targets", logs)
            stack = Stack(api_url, prometheus_url, logs, readyz_before_worker, statuses={})
            stack.statuses = send_traffic(stack)
            # Several scrapes after the traffic, so every rate() window holds a change.
            time.sleep(4)
        except Exception as exc:  # say what the processes printed, whatever went wrong
            raise AssertionError(f"the stack did not start: {type(exc).__name__}: {exc}\n{log_tails(logs)}") from exc
        yield stack
    finally:
        for process in reversed(processes):
            stop(process)
        clean_redis(prefix)


def send_traffic(stack: Stack) -> dict[str, int]:
    """Requests that leave a trace in every series: successes, Grad-CAM, refusals and a worker-side failure."""
    statuses: dict[str, int] = {}
    detect = f"{stack.api_url}/detect"
    with httpx.Client(timeout=90) as client:
        for index in range(3):
            frame = [("image", (f"frame{index}.png", png_bytes(128, 96, index), "image/png"))]
            statuses[f"single {index}"] = client.post(detect, files=frame).status_code
        pair = [("image", (f"pair{index}.png", png_bytes(160, 128, 10 + index), "image/png")) for index in range(2)]
        statuses["pair"] = client.post(detect, files=pair).status_code
        gradcam = [("image", ("cam.png", png_bytes(96, 96, 20), "image/png"))]
        statuses["gradcam"] = client.post(detect, params={"gradcam": "true"}, files=gradcam).status_code
        garbage = [("image", ("garbage.png", b"this is not an image at all", "image/png"))]
        statuses["garbage"] = client.post(detect, files=garbage).status_code
        statuses["bad conf"] = client.post(detect, params={"conf": "2"}, files=gradcam).status_code
        # A PNG whose header is intact but whose pixel data is cut short: it passes the API's header check
        # and fails when the worker decodes it.
        truncated = png_bytes(128, 96, 30)
        truncated = truncated[: len(truncated) // 2]
        statuses["truncated"] = client.post(detect, files=[("image", ("cut.png", truncated, "image/png"))]).status_code
        statuses["models"] = client.get(f"{stack.api_url}/models").status_code
    return statuses


def query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{stack.prometheus_url}/api/v1/query", params={"query": expr}, timeout=30).json()
    assert answer["status"] == "success", f"{expr}: {answer}"
    return answer["data"]["result"]


def test_traffic_got_the_expected_answers(stack: Stack) -> None:
    assert stack.readyz_before_worker == 503
    statuses = stack.statuses
    for name in ("single 0", "single 1", "single 2", "pair", "gradcam", "models"):
        assert statuses[name] == 200, f"{name}: {statuses}\n{stack.log_tail()}"
    assert statuses["garbage"] in {415, 422} and statuses["bad conf"] == 422, statuses
    assert statuses["truncated"] >= 400, statuses


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    queries = dashboard_queries()
    assert {name for name, _ in queries} >= GPU_ONLY_QUERIES, "the GPU-only list names panels that do not exist"
    empty = {name: expr for name, expr in queries if not query(stack, expr)}
    assert set(empty) == GPU_ONLY_QUERIES, (
        f"queries without data: {sorted(set(empty) - GPU_ONLY_QUERIES)}; "
        f"GPU queries that unexpectedly had data: {sorted(GPU_ONLY_QUERIES - set(empty))}\n"
        + "\n".join(f"{name}: {expr}" for name, expr in empty.items())
    )


def test_route_variable_lists_the_routes(stack: Stack) -> None:
    answer = httpx.get(
        f"{stack.prometheus_url}/api/v1/label/route/values", params={"match[]": "masenet_http_requests_total"}
    ).json()
    assert "/detect" in answer["data"]


def test_alert_rules_evaluate_on_real_series(stack: Stack) -> None:
    def evaluated() -> list[dict[str, Any]]:
        groups = httpx.get(f"{stack.prometheus_url}/api/v1/rules").json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(rule.get("lastEvaluation", NEVER) != NEVER for rule in rules) else []

    rules = wait_until(evaluated, 30, "the alert rules to be evaluated")
    assert {rule["name"] for rule in rules} >= {"MasenetQueueBacklog", "MasenetNoLiveWorkers"}
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    firing = {rule["name"] for rule in rules if rule["state"] != "inactive"}
    assert "MasenetNoLiveWorkers" not in firing, "a worker is up, yet the no-worker alert is pending or firing"
