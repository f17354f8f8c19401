"""`masenet bench load`: its pure helpers and report, and a real short run with workers killed.

The run uses the real Redis (the tests' database, under the harness's own prefix), real `masenet worker`
processes on a random-init masenet-n and a real API: 2 workers, about 24 s of load, a worker SIGKILLed every
10 s and replaced.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import httpx
import pytest
import redis

from service.cli import main
from tests.service.helpers import REDIS_URL
from tools.load_bench import parse_mix
from tools.load_report import (
    KINDS,
    Kill,
    Outcome,
    error_label,
    exception_label,
    format_failures,
    format_kills,
    format_table,
)

COLUMNS = ("kind", "requests", "ok", "errors", "unanswered", "ok/s", "p50 ms", "p95 ms", "p99 ms")


def table_rows(text: str) -> dict[str, dict[str, float]]:
    """The rows of the printed table, by kind: {"single": {"requests": 12, "ok": 11, ...}, ...}."""
    rows = {}
    for line in text.splitlines():
        cells = line.split()
        if cells and cells[0] in (*KINDS, "all") and len(cells) == 9:
            numbers = [float("nan") if cell == "-" else float(cell) for cell in cells[1:]]
            rows[cells[0]] = dict(zip(("requests", "ok", "errors", "unanswered", "ok/s"), numbers, strict=False))
    return rows


def column_names(header: str) -> list[str]:
    return re.findall(r"[a-z/]+(?:\d+ ms)?", header)


# ------------------------------------------------------------------------------------------- helpers


def test_parse_mix() -> None:
    assert parse_mix("single=6,multi=2,gradcam=1,video=1") == {"single": 6, "multi": 2, "gradcam": 1, "video": 1}
    assert parse_mix(" single=3 ") == {"single": 3, "multi": 0, "gradcam": 0, "video": 0}
    for bad in ("single=-1", "batch=2", "single", "single=0,video=0"):
        with pytest.raises(ValueError, match="--mix"):
            parse_mix(bad)


def test_error_labels() -> None:
    assert error_label(500, "the worker failed on image 'a.png' (job 1)") == "500 worker failure"
    assert error_label(504, "no result within 30 s") == "504 timeout"
    assert error_label(503, "the image queue holds 9 images ... (MASENET_MAX_QUEUE)") == "503 queue full"
    assert error_label(503, "Redis at redis://x is unreachable") == "503 unavailable"
    assert error_label(418, "") == "418 error"
    request = httpx.Request("POST", "http://127.0.0.1/detect")
    assert exception_label(httpx.ReadTimeout("timed out", request=request)) == ("no answer (client timeout)", True)
    assert exception_label(httpx.RemoteProtocolError("closed", request=request)) == ("connection dropped", True)
    assert exception_label(httpx.ConnectError("refused", request=request)) == ("connection error", False)
    assert exception_label(httpx.WriteError("broken pipe", request=request)) == ("connection error", False)


def test_table_counts_and_percentiles() -> None:
    outcomes = [Outcome("single", seconds) for seconds in (0.1, 0.2, 0.3, 0.4, 0.5)]
    outcomes += [Outcome("single", 30.0, "504 timeout", detail="no result within 30 s")]
    outcomes += [Outcome("video", 12.0), Outcome("video", 90.0, "video never ended", True, "job 1 still started")]
    text = format_table(outcomes, seconds=10.0)
    assert column_names(text.splitlines()[0]) == list(COLUMNS)
    rows = table_rows(text)
    assert set(rows) == {"single", "video", "all"}  # kinds without requests are left out
    assert rows["single"] == {"requests": 6, "ok": 5, "errors": 1, "unanswered": 0, "ok/s": 0.5}
    assert rows["video"] == {"requests": 2, "ok": 1, "errors": 0, "unanswered": 1, "ok/s": 0.1}
    assert rows["all"]["requests"] == 8 and rows["all"]["unanswered"] == 1
    single = next(line for line in text.splitlines() if line.split()[0] == "single").split()
    assert single[6:] == ["300", "480", "496"]  # p50, p95, p99 of the ok latencies only, in ms
    failures = format_failures(outcomes)
    errors, unanswered = failures.split("accepted but unanswered, by kind:")
    assert "504 timeout" in errors and "(single 1)" in errors and "no result within 30 s" in errors
    assert "video never ended" in unanswered and "video never ended" not in errors
    assert format_failures([Outcome("single", 0.1)]).splitlines() == [
        "errors by kind: none",
        "accepted but unanswered, by kind: none",
    ]
    kills = format_kills([Kill(10.0, "w-0", "w-2", 7.5), Kill(20.0, "w-1", "w-3")])
    assert "SIGKILL w-0, started w-2 (ready after 7.5 s)" in kills and "(not ready)" in kills


# ----------------------------------------------------------------------------------------------- run


@pytest.mark.slow
def test_short_run_with_worker_kills(
    redis_client: redis.Redis,
    tiny_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MASENET_TIMEOUT_S", "20")  # jobs a killed worker had popped answer 504 after this
    monkeypatch.setenv("MASENET_DEVICE", "cpu")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the harness's temporary folders go here
    code = main(
        [
            "--log-level", "WARNING",
            "bench", "load",
            "--redis-url", REDIS_URL,
            "--weights", str(tiny_checkpoint),
            "--workers", "2",
            "--duration", "24",
            "--kill-every", "10",
            "--concurrency", "4",
            "--size", "160x128",
            "--imgsz", "160",
            "--clip-seconds", "1",
            "--drain-timeout", "75",  # a chunk of a killed worker is retried within ~35 s
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    print(out)  # shown when the test fails
    assert list(tmp_path.iterdir()) == [], "the temporary work folder was left behind"
    assert not list(redis_client.scan_iter(match="*bench-load-*")), "keys of the run's prefix were left behind"
    assert not list(redis_client.scan_iter(match="rq:job:*")), "the run's rq jobs were left behind"

    header = next(line for line in out.splitlines() if line.split()[:1] == ["kind"])
    assert column_names(header) == list(COLUMNS)
    rows = table_rows(out)
    kills = re.findall(r"^\[ *[0-9.]+ s\] SIGKILL (\S+) \(pid \d+\); started (\S+)$", out, re.MULTILINE)
    assert len(kills) >= 1, "no worker was killed"
    assert f"worker kills: {len(kills)}" in out
    for kind in ("single", "multi", "gradcam"):
        assert rows[kind]["unanswered"] == 0, f"{kind} requests went unanswered"
        assert rows[kind]["ok"] >= 1, f"no {kind} request succeeded"
    assert rows["video"]["ok"] >= 1, "no video job finished"
    assert rows["all"]["unanswered"] == 0
    assert "ACCEPTED BUT UNANSWERED: 0" in out
    assert code == 0
