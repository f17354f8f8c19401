"""How the benchmarks' requests (through `service.client.AsyncClient`) turn answers into outcomes: against
scripted HTTP answers (httpx.MockTransport), without a service."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import service.client
from jobs.contracts import ModelInfo
from jobs.video import JobProgress, JobState, VideoStatus, VideoSummary
from service.client import AsyncClient
from service.schemas import DetectResponse, ImageResult, Timing
from tools import bench, load_bench
from tools.load_report import Outcome

Handler = Callable[[httpx.Request], httpx.Response]
QUEUE_FULL = {"detail": "the image queue holds 64 images (MASENET_MAX_QUEUE)"}


def scripted(handler: Handler, sent: list[httpx.Request] | None = None, **options) -> AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        if sent is not None:
            sent.append(request)
        return handler(request)

    return AsyncClient("http://service", retries=0, transport=httpx.MockTransport(answer), **options)


def detect_answer(images: int, gradcam: bool = False) -> httpx.Response:
    result = ImageResult(filename="a.png", width=4, height=4, detections=[], gradcam="png" if gradcam else None)
    timing = Timing(queue_ms=0.0, inference_ms=0.0, total_ms=0.0)
    body = DetectResponse(model=ModelInfo(), results=[result] * images, timing=timing)
    return httpx.Response(200, content=body.model_dump_json())


def job_answer(status: VideoStatus, error: str | None = None) -> httpx.Response:
    state = JobState(job_id="j1", status=status, progress=JobProgress(frames_done=0, frames_total=3), error=error)
    return httpx.Response(200, content=state.model_dump_json())


def send(handler: Handler, kind: str, sent: list[httpx.Request] | None = None) -> Outcome:
    async def one() -> Outcome:
        async with scripted(handler, sent) as client:
            return await load_bench.send_detect(client, kind, [b"png"], 160, random.Random(0))

    return asyncio.run(one())


# ----------------------------------------------------------------------------------------- bench load


def test_detect_outcomes_are_labelled_by_status_and_detail() -> None:
    sent: list[httpx.Request] = []
    busy = httpx.Response(503, headers={"Retry-After": "0"}, json=QUEUE_FULL)
    outcome = send(lambda request: busy, "single", sent)
    assert (outcome.error, outcome.unanswered, outcome.detail) == ("503 queue full", False, QUEUE_FULL["detail"])
    assert len(sent) == 1, "a 503 is counted, not retried"
    assert sent[0].url.params["imgsz"] == "160" and sent[0].url.params["gradcam"] == "false"
    outcome = send(lambda request: httpx.Response(500, json={"detail": "worker died"}), "multi")
    assert (outcome.error, outcome.detail) == ("500 worker failure", "worker died")
    assert send(lambda request: detect_answer(load_bench.MULTI_IMAGES), "multi").error is None
    assert send(lambda request: detect_answer(1, gradcam=True), "gradcam").error is None


def test_an_answer_missing_results_or_overlays_is_incomplete() -> None:
    outcome = send(lambda request: detect_answer(3), "multi")
    assert (outcome.error, outcome.detail) == ("200 incomplete results", "3 results for 4 images")
    assert send(lambda request: detect_answer(1, gradcam=False), "gradcam").error == "200 incomplete results"


def test_a_request_without_an_answer_is_labelled_by_its_exception() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    outcome = send(timeout, "single")
    assert (outcome.error, outcome.unanswered) == ("no answer (client timeout)", True)
    assert outcome.detail.startswith("ReadTimeout")
    assert (send(refused, "single").error, send(refused, "single").unanswered) == ("connection error", False)


def run_video(routes: dict[tuple[str, str], list[httpx.Response]], deadline_s: float = 10.0) -> tuple[Outcome, list]:
    """One video_job against scripted answers by (method, path); the last answer of a route repeats."""
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        queue = routes[(request.method, request.url.path)]
        given = queue.pop(0) if len(queue) > 1 else queue[0]
        return httpx.Response(given.status_code, headers=given.headers, content=given.content)  # a fresh copy

    async def one() -> Outcome:
        async with scripted(answer, sent) as client:
            return await load_bench.video_job(client, clip, 160, load_bench.time.monotonic() + deadline_s)

    clip = Path(__file__)  # any file: the scripted service does not read it
    return asyncio.run(one()), [(request.method, request.url.path) for request in sent]


ACCEPTED = httpx.Response(202, json={"job_id": "j1", "status_url": "/jobs/j1"})


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load_bench, "POLL_S", 0.0)


def test_a_video_job_is_polled_to_its_end_its_result_read_and_deleted() -> None:
    result = {"video": VideoSummary(fps=25.0, width=4, height=4, frames=3).model_dump(), "frames": []}
    routes = {
        ("POST", "/jobs"): [ACCEPTED],
        ("GET", "/jobs/j1"): [job_answer(VideoStatus.QUEUED), job_answer(VideoStatus.FINISHED)],
        ("GET", "/jobs/j1/result"): [httpx.Response(200, json=result)],
        ("DELETE", "/jobs/j1"): [job_answer(VideoStatus.FINISHED)],
    }
    outcome, sent = run_video(routes)
    assert outcome.error is None
    assert sent == [("POST", "/jobs"), ("GET", "/jobs/j1"), ("GET", "/jobs/j1"), ("GET", "/jobs/j1/result")] + [
        ("DELETE", "/jobs/j1")
    ]


def test_video_failures_keep_their_labels() -> None:
    refused = {("POST", "/jobs"): [httpx.Response(503, json=QUEUE_FULL)]}
    outcome, sent = run_video(refused)
    assert outcome.error == "503 queue full" and sent == [("POST", "/jobs")]

    polls = [httpx.Response(503, json={"detail": "Redis down"}), httpx.Response(404, json={"detail": "no job j1"})]
    lost = {("POST", "/jobs"): [ACCEPTED], ("GET", "/jobs/j1"): polls, ("DELETE", "/jobs/j1"): [polls[1]]}
    outcome, sent = run_video(lost)
    assert (outcome.error, outcome.detail) == ("404 video job lost", "no job j1")
    assert sent[-1] == ("DELETE", "/jobs/j1"), "the job is deleted even when the delete is refused"

    failed = [job_answer(VideoStatus.FAILED, "corrupt chunk")]
    outcome, _ = run_video({("POST", "/jobs"): [ACCEPTED], ("GET", "/jobs/j1"): failed, ("DELETE", "/jobs/j1"): failed})
    assert (outcome.error, outcome.detail) == ("video failed", "job j1: corrupt chunk")

    no_result = {
        ("POST", "/jobs"): [ACCEPTED],
        ("GET", "/jobs/j1"): [job_answer(VideoStatus.FINISHED)],
        ("GET", "/jobs/j1/result"): [httpx.Response(500, json={"detail": "result unreadable"})],
        ("DELETE", "/jobs/j1"): [job_answer(VideoStatus.FINISHED)],
    }
    assert run_video(no_result)[0].error == "result 500 worker failure"


def test_a_video_still_running_at_the_drain_deadline_is_unanswered() -> None:
    routes = {
        ("POST", "/jobs"): [ACCEPTED],
        ("GET", "/jobs/j1"): [job_answer(VideoStatus.STARTED)],
        ("DELETE", "/jobs/j1"): [job_answer(VideoStatus.CANCELED)],
    }
    outcome, sent = run_video(routes, deadline_s=-1.0)
    assert (outcome.error, outcome.unanswered) == ("video never ended", True)
    assert outcome.detail == "job j1 still queued at the end of the drain"
    assert sent == [("POST", "/jobs"), ("DELETE", "/jobs/j1")]


def test_ready_workers_are_none_while_the_service_is_not_ready() -> None:
    killer = load_bench.WorkerKiller(type("Stack", (), {"workers": {}})(), "w", 1.0, 0)

    def ready(handler: Handler) -> list[str]:
        async def one() -> list[str]:
            async with scripted(handler) as client:
                return await killer.ready_workers(client)

        return asyncio.run(one())

    assert ready(lambda request: httpx.Response(200, json={"status": "ok", "workers": ["w-0", "w-1"]})) == [
        "w-0",
        "w-1",
    ]
    assert ready(lambda request: httpx.Response(503, json={"detail": "no worker has a model"})) == []


# -------------------------------------------------------------------------------------- bench service


def test_bench_service_counts_refusals_once_and_sends_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[httpx.Request] = []
    answers = iter([detect_answer(1), httpx.Response(503, headers={"Retry-After": "0"}, json=QUEUE_FULL)] * 3)

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return next(answers)

    transport = httpx.MockTransport(answer)
    monkeypatch.setattr(service.client, "AsyncClient", functools.partial(AsyncClient, transport=transport))
    headers = {"Authorization": "Bearer k1"}
    seconds, latencies, errors = asyncio.run(bench.drive("http://service", [b"png"], 1, 6, 160, headers))
    assert (len(latencies), errors, len(sent)) == (3, 3, 6)
    assert all(request.headers["authorization"] == "Bearer k1" for request in sent)
    assert sent[0].url.params["imgsz"] == "160" and seconds > 0
