"""`masenet bench streams`: live camera streams at several stream counts: processed frames/s, drops, latency.

For each stream count N the benchmark starts N fake cameras in this process (`tools.cameras`, the scene the
shipped model detects), POSTs N streams with the --fps cap, waits until every stream is running, waits --warmup
seconds and then measures for --seconds. Each stream's GET /streams/{id} is read at the start and the end of the
window: read and processed frames/s, and the drop rate (dropped / read over the window; a camera faster than the
cap drops 1 - fps / camera fps even on an idle machine). One reader thread per stream follows its server-sent
events; the latency of a frame event is the time it arrived here minus its `captured_at` (both unix times, so
both clocks must be this machine's), over the events that arrived in the window, all streams together. The
workers' own p50 / p95 (capture to publish, each stream's last 200 frames, mean over the streams) stand beside
it. Then the streams are deleted and the cameras closed.

Without --url it starts a private stack (redis-server on a free port unless --redis-url is given, --workers
`masenet worker` processes, one `masenet serve`) allowed to open 127.0.0.1 cameras. The cameras share the
machine with the stack (an RTSP camera runs an H.264 encoder). Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT_S = 300.0
RUNNING_TIMEOUT_S = 60.0
POLL_S = 0.25
READER_JOIN_S = 5.0
COLUMNS = (
    ("streams", 7),
    ("fps cap", 7),
    ("read/s per stream", 17),
    ("processed/s", 11),
    ("per stream", 10),
    ("drop rate", 9),
    ("p50 ms", 8),
    ("p95 ms", 8),
    ("worker p50", 10),
    ("worker p95", 10),
)


def register(subparsers: argparse._SubParsersAction, bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `masenet bench streams`."""
    parser = bench_subparsers.add_parser(
        "streams",
        help="live camera streams at several stream counts: processed frames/s, drops, capture-to-event latency",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("--streams", default="1,4,8", help="comma-separated stream counts (default 1,4,8)")
    parser.add_argument("--fps", type=float, default=5.0, help="per-stream fps cap sent with POST /streams")
    parser.add_argument("--camera-fps", type=float, default=10.0, help="frame rate of each fake camera")
    parser.add_argument("--camera", choices=("rtsp", "mjpeg"), default="rtsp", help="fake camera kind")
    parser.add_argument(
        "--camera-host",
        default="127.0.0.1",
        help="address the cameras listen on and are announced at (with --url: one the workers reach and allow)",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per stream count")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after all streams run, before measuring")
    parser.add_argument("--imgsz", type=int, default=None, help="sent with each stream (default: the model's scale)")
    parser.add_argument("--workers", type=int, default=1, help="workers of the private stack (default 1)")
    parser.add_argument("--url", default=None, help="a running service instead of the private stack")
    parser.add_argument("--weights", type=Path, default=None, help="checkpoint (default: MASENET_WEIGHTS/shipped)")
    parser.add_argument("--device", default=None, help="MASENET_DEVICE for the workers")
    parser.add_argument("--api-key", default=None, help="bearer key for a service with MASENET_API_KEYS")
    parser.add_argument("--redis-url", default=None, help="use this Redis (keys deleted by prefix) instead")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the stack's logs go (default: temp)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    parser.set_defaults(func=run_bench)


# ------------------------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class Reading:
    """One GET /streams/{id}: the worker's counters and latency figures, read at `at` (monotonic seconds)."""

    at: float
    status: str
    frames_read: int
    frames_processed: int
    frames_dropped: int
    worker_p50_ms: float | None
    worker_p95_ms: float | None

    @classmethod
    def from_state(cls, state: dict[str, Any], at: float) -> Reading:
        latency = state.get("latency_ms") or {}
        return cls(
            at=at,
            status=state["status"],
            frames_read=state["frames_read"],
            frames_processed=state["frames_processed"],
            frames_dropped=state["frames_dropped"],
            worker_p50_ms=latency.get("p50"),
            worker_p95_ms=latency.get("p95"),
        )


@dataclass
class LevelResult:
    """One stream count's window: counter deltas summed over the streams, and the event latencies."""

    streams: int
    fps_cap: float
    camera_fps: float
    read_per_s: float  # all streams together
    processed_per_s: float
    frames_read: int
    frames_dropped: int
    latencies_ms: list[float] = field(default_factory=list)
    worker_p50_ms: list[float] = field(default_factory=list)
    worker_p95_ms: list[float] = field(default_factory=list)
    not_running: int = 0  # streams not running at the end of the window
    reader_errors: int = 0

    @property
    def drop_rate(self) -> float:
        return drop_rate(self.frames_read, self.frames_dropped)


def rate(count: float, seconds: float) -> float:
    """`count` per second; nan for an empty window."""
    return count / seconds if seconds > 0 else float("nan")


def drop_rate(frames_read: int, frames_dropped: int) -> float:
    """Dropped over read; nan when nothing was read."""
    return frames_dropped / frames_read if frames_read > 0 else float("nan")


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def window_latencies_ms(arrivals: list[tuple[float, float]], start: float, end: float) -> list[float]:
    """Milliseconds from capture to arrival of the (arrived_at, captured_at) unix times that arrived in [start, end]."""
    return [1000.0 * (arrived - captured) for arrived, captured in arrivals if start <= arrived <= end]


def level_result(
    fps_cap: float,
    camera_fps: float,
    before: list[Reading],
    after: list[Reading],
    latencies_ms: list[float],
    reader_errors: int = 0,
) -> LevelResult:
    """The window of one level from the readings at its start and end (stream by stream, in the same order)."""
    read_per_s = processed_per_s = 0.0
    frames_read = frames_dropped = 0
    for first, last in zip(before, after, strict=True):
        seconds = last.at - first.at
        read_per_s += rate(last.frames_read - first.frames_read, seconds)
        processed_per_s += rate(last.frames_processed - first.frames_processed, seconds)
        frames_read += last.frames_read - first.frames_read
        frames_dropped += last.frames_dropped - first.frames_dropped
    return LevelResult(
        streams=len(before),
        fps_cap=fps_cap,
        camera_fps=camera_fps,
        read_per_s=read_per_s,
        processed_per_s=processed_per_s,
        frames_read=frames_read,
        frames_dropped=frames_dropped,
        latencies_ms=latencies_ms,
        worker_p50_ms=[reading.worker_p50_ms for reading in after if reading.worker_p50_ms is not None],
        worker_p95_ms=[reading.worker_p95_ms for reading in after if reading.worker_p95_ms is not None],
        not_running=sum(reading.status != "running" for reading in after),
        reader_errors=reader_errors,
    )


def _cell(value: float, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if math.isnan(value) else f"{value:>{width}.{digits}f}"


def format_row(result: LevelResult) -> str:
    """One level as a row of COLUMNS, with a note when streams stopped running or event readers failed."""
    from tools.bench import percentile

    widths = [width for _, width in COLUMNS]
    per_stream = result.streams or 1
    cells = [
        f"{result.streams:>{widths[0]}}",
        _cell(result.fps_cap, widths[1], 1),
        _cell(result.read_per_s / per_stream, widths[2], 2),
        _cell(result.processed_per_s, widths[3], 2),
        _cell(result.processed_per_s / per_stream, widths[4], 2),
        _cell(result.drop_rate, widths[5], 2),
        _cell(percentile(result.latencies_ms, 0.5), widths[6], 0),
        _cell(percentile(result.latencies_ms, 0.95), widths[7], 0),
        _cell(mean(result.worker_p50_ms), widths[8], 0),
        _cell(mean(result.worker_p95_ms), widths[9], 0),
    ]
    notes = [f"{result.not_running} not running at the end"] if result.not_running else []
    notes += [f"{result.reader_errors} event reader errors"] if result.reader_errors else []
    return " ".join(cells) + (f"  ({'; '.join(notes)})" if notes else "")


def format_table(results: list[LevelResult], title: str) -> str:
    """The title, a header of COLUMNS, one row per level and what the columns mean."""
    header = " ".join(f"{name:>{width}}" for name, width in COLUMNS)
    lines = [title, header, "-" * len(header), *(format_row(result) for result in results)]
    if results:
        cap, camera = results[0].fps_cap, results[0].camera_fps
        lines += [
            f"drop rate: dropped / read in the window (the cap alone drops {max(0.0, 1 - cap / camera):.2f} of a "
            f"{camera:g} fps camera)",
            "p50/p95 ms: captured_at to the arrival of the frame events here, the window's events of all streams",
            "worker p50/p95: capture to publish as the workers report it (each stream's last 200 frames, start-up "
            "included while fewer have run), mean over the streams",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- events


class EventReader:
    """Follows one stream's events in a thread (service.client, which resumes with Last-Event-ID after an error),
    keeping (arrived_at, captured_at) of every frame event; it ends when the API ends the events (DELETE)."""

    def __init__(self, url: str, api_key: str | None, stream_id: str) -> None:
        self.url, self.api_key, self.stream_id = url, api_key, stream_id
        self.arrivals: list[tuple[float, float]] = []
        self.errors: list[str] = []
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sse-reader", daemon=True)

    def start(self) -> EventReader:
        self._thread.start()
        return self

    def join(self, timeout_s: float = READER_JOIN_S) -> bool:
        """Wait up to `timeout_s` for the reader to end; whether it did."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        from jobs.streams import FrameEvent
        from service.client import Client

        try:
            with Client(self.url, api_key=self.api_key) as client:
                for event in client.events(self.stream_id):
                    self.connected.set()
                    if isinstance(event.data, FrameEvent):
                        self.arrivals.append((time.time(), event.data.captured_at))
        except Exception as exc:  # counted in the table's errors
            self.errors.append(f"{type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------------------- the run


def run_bench(args: argparse.Namespace) -> int:
    from service.client import Client

    levels = [int(value) for value in args.streams.split(",") if value.strip()]
    if not levels or min(levels) < 1 or args.workers < 1 or args.seconds <= 0 or args.fps <= 0:
        raise SystemExit("--streams needs counts of at least 1, --workers at least 1, --seconds and --fps above 0")
    results: list[LevelResult] = []
    with contextlib.ExitStack() as resources:
        url = args.url
        if url is None:
            work_dir = args.work_dir
            if work_dir is None:
                work_dir = Path(resources.enter_context(tempfile.TemporaryDirectory(prefix="masenet-bench-streams-")))
            work_dir.mkdir(parents=True, exist_ok=True)
            url = resources.enter_context(private_stack(args, work_dir, max(levels))).api_url
        client = resources.enter_context(Client(url, api_key=args.api_key, timeout=30.0))
        title = describe_run(client, args)
        print("\n".join(format_table([], title).splitlines()[:2]), flush=True)  # the rows follow as they come
        for count in levels:
            results.append(run_level(client, url, args, count))
            print(format_row(results[-1]), flush=True)
    print("\n" + format_table(results, title), flush=True)
    if args.json:
        rows = [{**asdict(result), "drop_rate": result.drop_rate} for result in results]
        args.json.write_text(json.dumps({"title": title, "levels": rows}, indent=2), encoding="utf-8")
    return 0


@contextlib.contextmanager
def private_stack(args: argparse.Namespace, work_dir: Path, most_streams: int) -> Iterator[Any]:
    """The self-started stack (tools.launch.local_stack), allowed to open cameras on --camera-host."""
    from jobs.settings import Settings
    from tools.launch import local_stack
    from tools.traffic import bench_weights

    settings = Settings()
    env = {
        "MASENET_WEIGHTS": str(bench_weights(work_dir, args.weights)),
        "MASENET_WORKER_METRICS_PORT": "0",
        "MASENET_STREAM_ALLOW": args.camera_host,
        "MASENET_MAX_STREAMS": str(max(settings.max_streams, most_streams)),
        "MASENET_MAX_STREAMS_PER_WORKER": str(
            max(settings.max_streams_per_worker, math.ceil(most_streams / args.workers))
        ),
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.workers)),
    }
    if args.device:
        env["MASENET_DEVICE"] = args.device
    prefix = f"bench-streams-{os.getpid()}"
    with local_stack(
        env,
        workers=args.workers,
        redis_url=args.redis_url,
        prefix=prefix,
        log_dir=work_dir,
        worker_name=f"{prefix}-worker",
        private_storage=True,
        ready_timeout_s=STARTUP_TIMEOUT_S,
    ) as stack:
        yield stack


def describe_run(client: Any, args: argparse.Namespace) -> str:
    """The table's title: the machine, the workers and the model they serve (GET /models)."""
    served = []
    for model in client.models().models:
        scale = f"imgsz {args.imgsz}" if args.imgsz else f"pixel scale {model.pixel_scale}"
        if not args.imgsz and model.pixel_scale is None:
            scale = f"imgsz {model.imgsz}"
        name = model.name if model.name.endswith(model.scale) else f"{model.name}-{model.scale}"
        served.append(
            f"{name} ({model.runtime}, {model.device}, {model.dtype}, {scale}, "
            f"weights {model.weights_sha256[:12]}) on {len(model.workers)} worker(s)"
        )
    where = args.url or "a private stack"
    return (
        f"live streams: {args.camera} cameras at {args.camera_fps:g} fps, cap {args.fps:g} fps, "
        f"{args.warmup:g} s warm-up, {args.seconds:g} s window; {where}; {os.cpu_count()} CPUs; "
        + "; ".join(served or ["no ready worker"])
    )


def open_camera(kind: str, fps: float, host: str) -> Any:
    from tools.cameras import CameraScene, MjpegCamera
    from tools.rtsp_camera import RtspCamera

    camera_class = RtspCamera if kind == "rtsp" else MjpegCamera
    return camera_class(CameraScene(), fps=fps, host=host)


def run_level(client: Any, api_url: str, args: argparse.Namespace, count: int) -> LevelResult:
    """Start `count` cameras and streams, measure one window, then delete the streams and close the cameras."""
    with contextlib.ExitStack() as resources:
        cameras = [
            resources.enter_context(open_camera(args.camera, args.camera_fps, args.camera_host)) for _ in range(count)
        ]
        stream_ids: list[str] = []
        readers: list[EventReader] = []
        resources.callback(stop_streams, client, stream_ids, readers)
        for camera in cameras:
            accepted = client.start_stream(camera.url, fps=args.fps, imgsz=args.imgsz or None)
            stream_ids.append(accepted.stream_id)
            readers.append(EventReader(api_url, args.api_key, accepted.stream_id).start())
        wait_running(client, stream_ids, RUNNING_TIMEOUT_S + 2.0 * count)
        for reader in readers:
            reader.connected.wait(10.0)
        time.sleep(args.warmup)
        start = time.time()
        before = read_all(client, stream_ids)
        time.sleep(args.seconds)
        after = read_all(client, stream_ids)
        end = time.time()
        arrivals = [arrival for reader in readers for arrival in list(reader.arrivals)]
        errors = sum(len(reader.errors) for reader in readers)
        return level_result(args.fps, args.camera_fps, before, after, window_latencies_ms(arrivals, start, end), errors)


def read_all(client: Any, stream_ids: list[str]) -> list[Reading]:
    readings = []
    for stream_id in stream_ids:
        readings.append(Reading.from_state(client.stream(stream_id).model_dump(mode="json"), time.monotonic()))
    return readings


def wait_running(client: Any, stream_ids: list[str], timeout_s: float) -> None:
    """Until every stream is running; SystemExit naming the laggards' states when one fails or time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = [client.stream(stream_id).model_dump(mode="json") for stream_id in stream_ids]
        if all(state.get("status") == "running" for state in states):
            return
        failed = [state for state in states if state.get("status") == "failed"]
        if failed or time.monotonic() > deadline:
            late = [
                f"{state.get('stream_id')}: {state.get('status')} ({state.get('error') or 'no error'})"
                for state in states
                if state.get("status") != "running"
            ]
            raise SystemExit(f"{len(late)} of {len(states)} streams are not running: " + "; ".join(late))
        time.sleep(POLL_S)


def stop_streams(client: Any, stream_ids: list[str], readers: list[EventReader]) -> None:
    """DELETE every stream (their events end, and with them the readers), then stop the readers."""
    for stream_id in stream_ids:
        with contextlib.suppress(Exception):
            client.stop_stream(stream_id)
    for reader in readers:
        reader.join()
