"""Every dashboard query returns data from a real Prometheus scraping a real API and a real worker.

The test starts `masenet serve` and `masenet worker` against the local Redis (own DB index and queue prefix,
cleaned up afterwards) with a tiny random-init checkpoint, and the `prometheus` binary (Debian package) with
a 1 s scrape interval on both (`deploy/live_stack.py`, shared with the dashboard renderer). It sends traffic that
produces every series the dashboard reads (successful and refused /detect requests, a Grad-CAM request, a frame
that fails inside the worker, a 503 from /readyz while no worker is up, a live stream on a fake MJPEG camera), waits
for the scrapes, then runs each panel's query through `/api/v1/query`.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from deploy.live_stack import LiveStack, live_stack, live_stream
from tests.deploy.deploy_files import dashboard_queries
from tools.launch import log_tails, wait_until
from tools.traffic import png_bytes, random_checkpoint

pytestmark = pytest.mark.slow

REDIS_URL = os.environ.get("MASENET_TEST_PROMETHEUS_REDIS_URL", "redis://127.0.0.1:6379/14")
NEVER = "0001-01-01T00:00:00Z"  # Prometheus' lastEvaluation of a rule not evaluated yet
# Panels that cannot have data without a GPU: the worker reports NVML figures only on CUDA.
GPU_ONLY_QUERIES = {
    "GPU utilisation [A]",
    "GPU memory [A]",
    "GPU memory [B]",
}


@dataclass
class Stack(LiveStack):
    statuses: dict[str, int] = field(default_factory=dict)
    stream_state: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("prometheus") is None:
        pytest.skip("the prometheus binary is not installed (Debian: apt-get install -y prometheus)")
    work = tmp_path_factory.mktemp("prometheus-live")
    prefix = f"masenet-prom-{uuid.uuid4().hex[:8]}"
    with ExitStack() as running:
        try:
            live = running.enter_context(
                live_stack(work, REDIS_URL, prefix, random_checkpoint(work / "tiny.safetensors", imgsz=160))
            )
            stack = Stack(live.api_url, live.prometheus_url, live.logs, live.readyz_before_worker)
            # Runs until the end of the module, so the stream's series keep changing while the queries run.
            stream = running.enter_context(live_stream(stack.api_url))
            stack.stream_state = stream.wait_processing()
            stack.statuses = send_traffic(stack)
            # Several scrapes after the traffic, so every rate() window holds a change.
            time.sleep(4)
        except Exception as exc:  # say what the processes printed, whatever went wrong
            logs = log_tails({name: work / f"{name}.log" for name in ("api", "worker", "prometheus")})
            raise AssertionError(f"the stack did not start: {type(exc).__name__}: {exc}\n{logs}") from exc
        yield stack


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
    assert stack.stream_state["status"] == "running" and stack.stream_state["frames_processed"] > 0, stack.stream_state


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
