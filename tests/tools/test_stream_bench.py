"""`masenet bench streams`: the window arithmetic, the event parsing and the table without processes; one short
real run through the CLI (a private redis-server, one worker on the shipped weights, one RTSP camera)."""

from __future__ import annotations

import http.server
import json
import math
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.cli import main
from tools.stream_bench import (
    COLUMNS,
    EventReader,
    LevelResult,
    Reading,
    drop_rate,
    format_table,
    level_result,
    rate,
    window_latencies_ms,
)


def reading(
    at: float, read: int, processed: int, dropped: int, p50: float | None = None, p95: float | None = None
) -> Reading:
    return Reading(at, "running", read, processed, dropped, p50, p95)


def test_rates_of_an_empty_window_are_nan() -> None:
    assert rate(50, 10.0) == 5.0 and math.isnan(rate(3, 0.0))
    assert drop_rate(100, 25) == 0.25 and math.isnan(drop_rate(0, 0))


def test_latencies_count_only_the_events_that_arrived_in_the_window() -> None:
    arrivals = [(99.9, 99.8), (100.0, 99.95), (105.0, 104.9), (110.0, 109.7), (110.1, 110.0)]
    assert window_latencies_ms(arrivals, 100.0, 110.0) == pytest.approx([50.0, 100.0, 300.0])


def test_level_sums_each_streams_window() -> None:
    before = [reading(10.0, 100, 50, 50), reading(10.5, 0, 0, 0)]
    after = [reading(30.0, 300, 150, 150, 80.0, 120.0), Reading(20.5, "reconnecting", 50, 20, 30, None, None)]
    result = level_result(5.0, 10.0, before, after, [100.0, 200.0], reader_errors=1)
    assert result.streams == 2
    assert result.read_per_s == pytest.approx(200 / 20 + 50 / 10)  # each stream over its own window
    assert result.processed_per_s == pytest.approx(100 / 20 + 20 / 10)
    assert (result.frames_read, result.frames_dropped) == (250, 130) and result.drop_rate == pytest.approx(0.52)
    assert result.worker_p50_ms == [80.0] and result.worker_p95_ms == [120.0]  # a stream without figures is left out
    assert result.not_running == 1 and result.reader_errors == 1


def test_reading_takes_the_counters_and_the_workers_latency() -> None:
    state = {"status": "running", "frames_read": 9, "frames_processed": 4, "frames_dropped": 5, "fps_in": 10.0}
    assert Reading.from_state({**state, "latency_ms": {"p50": 90.5, "p95": None}}, 3.0) == Reading(
        3.0, "running", 9, 4, 5, 90.5, None
    )
    assert Reading.from_state({**state, "latency_ms": None}, 3.0).worker_p50_ms is None


def table_row(text: str, streams: int) -> list[str]:
    return next(line.split() for line in text.splitlines() if line.split()[:1] == [str(streams)])


def test_table_has_the_columns_a_row_per_level_and_dashes_for_missing_numbers() -> None:
    busy = LevelResult(4, 5.0, 10.0, 39.6, 19.2, 792, 408, [float(value) for value in range(1, 101)], [90.0, 110.0])
    empty = LevelResult(1, 5.0, 10.0, 0.0, 0.0, 0, 0, not_running=1)
    text = format_table([busy, empty], "title line")
    lines = text.splitlines()
    assert lines[0] == "title line"
    end = 0
    for name, width in COLUMNS:  # every column, in order, right-aligned in its width
        assert lines[1][end : end + width + 1].strip() == name
        end += width + 1
    assert table_row(text, 4) == ["4", "5.0", "9.90", "19.20", "4.80", "0.52", "50", "95", "100", "-"]
    row = table_row(text, 1)
    assert row[2:] == ["0.00", "0.00", "0.00", "-", "-", "-", "-", "-", "(1", "not", "running", "at", "the", "end)"]
    assert "the cap alone drops 0.50 of a 10 fps camera" in text


# ------------------------------------------------------------------------------------------ event reader


class _Events(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def event_server() -> Iterator[str]:
    frames = [
        {"frame_index": index, "time_s": index / 5, "captured_at": 1000.0 + index, "detections": []}
        for index in range(3)
    ]
    chunks = ["retry: 2000\n\n", 'id: 1-0\nevent: status\ndata: {"status": "running"}\n\n']
    chunks += [f"id: {index + 2}-0\nevent: frame\ndata: {json.dumps(frame)}\n\n" for index, frame in enumerate(frames)]
    _Events.body = "".join(chunks).encode()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Events)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_event_reader_keeps_the_capture_time_of_each_frame_event_until_the_events_end(event_server: str) -> None:
    reader = EventReader(event_server, None, "x").start()
    assert reader.join(timeout_s=10.0)  # the server closes the events after the last one: the reader ends by itself
    assert reader.connected.is_set() and reader.errors == []
    assert [captured for _, captured in reader.arrivals] == [1000.0, 1001.0, 1002.0]


# ------------------------------------------------------------------------------------------------- run


@pytest.mark.slow
def test_short_run_prints_a_table_with_processed_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the run's temporary folders go here
    raw = tmp_path / "numbers.json"
    code = main(
        [
            "--log-level", "WARNING",
            "bench", "streams",
            "--streams", "1",
            "--seconds", "3",
            "--warmup", "1",
            "--json", str(raw),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    print(out)  # shown when the test fails
    assert code == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["numbers.json"], "temporary files were left behind"
    assert "CPUs" in out and "worker(s)" in out
    row = table_row(out.split("\n\n")[-1], 1)
    assert float(row[3]) > 0 and float(row[4]) > 0  # processed frames/s, total and per stream
    assert float(row[6]) > 0  # latency p50 measured from the events
    level = json.loads(raw.read_text())["levels"][0]
    assert level["streams"] == 1 and level["processed_per_s"] > 0 and level["latencies_ms"]
