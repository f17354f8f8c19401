"""Video chunk and finalize jobs.

A chunk job decodes source frames [start, stop) of the stored upload (seek to the keyframe before
`start`, decode forward, keep every `frame_stride`-th frame), runs them through the detector in batches of
at most `max_batch` (sized so that one pass stays short, see AdaptiveBatcher), counts progress in the job
hash after every batch, and writes its result file. Between batches it checks whether the job was
canceled (so work stops within one chunk) and calls the worker's `between_batches` hook, which serves
interactive image jobs that arrived meanwhile.

The finalize job runs once every chunk job has ended (rq dependency with failures allowed). It fails the
video job if a chunk is missing, otherwise merges the chunk results in frame order, tracks targets over
the whole sequence, writes `result.json`, renders the annotated MP4 when asked, and marks the job finished.

The worker process installs its detector and Redis connection once with `configure()`; rq then calls
`chunk_job` / `finalize_job` with the JSON payload made by `service.video.enqueue_video_job`.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from jobs.contracts import DetectParams, ModelInfo, over_input_budget
from model.tracking import TrackerConfig, track_sequence
from service.video import (
    JobStatus,
    JobStorage,
    VideoInfo,
    add_progress,
    read_job_state,
    refresh_ttl,
    set_status,
    should_stop,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

Item = TypeVar("Item")


class FrameDetector(Protocol):
    """What a chunk needs from the model: `model.detector.Detector` satisfies it."""

    def detect(
        self,
        frames: list[np.ndarray],
        conf: float,
        iou: float,
        max_det: int,
        imgsz: int | None,
        pixel_scale: float | None,
        tta: str | None,
    ) -> list[list[dict[str, Any]]]: ...


@dataclass
class VideoContext:
    """Everything the video jobs need from the worker process, installed once with `configure()`."""

    connection: Any  # redis.Redis (bytes responses, as rq uses it)
    storage: JobStorage
    detector: FrameDetector | None
    worker_name: str
    max_batch: int = 8
    batch_time_target_s: float = 0.1  # video batches are sized to take about this long (see AdaptiveBatcher)
    ttl_s: int = 86400
    between_batches: Callable[[], None] | None = None
    frames_processed: Callable[[int], None] | None = None  # metrics hook: frames run through the model
    model: ModelInfo | None = None  # the served model's defaults, for the input budget
    max_input_pixels: int | None = None  # MASENET_MAX_INPUT_PIXELS; None: no check


_context: VideoContext | None = None


def configure(context: VideoContext | None) -> None:
    """Install the process-wide context used by `chunk_job` and `finalize_job` (None removes it)."""
    global _context
    _context = context


def _require_context() -> VideoContext:
    if _context is None:
        raise RuntimeError("video jobs need worker.video.configure(...) to be called once in the worker process")
    return _context


def chunk_job(payload: dict[str, Any]) -> dict[str, Any]:
    """rq entry point for one chunk (payload: prefix, job_id, index, start, stop)."""
    return run_chunk(payload, _require_context())


def finalize_job(payload: dict[str, Any]) -> dict[str, Any]:
    """rq entry point for the merge step (payload: prefix, job_id)."""
    return finalize(payload, _require_context())


# ---------------------------------------------------------------------------------------------- decode


@dataclass(frozen=True)
class DecodedFrame:
    index: int  # position in the source video, 0-based
    time_s: float  # presentation time from the start of the stream
    image: np.ndarray  # (H, W, 3) uint8 RGB


def iter_frames(path: str | Path, start: int, stop: int, frame_stride: int = 1) -> Iterator[DecodedFrame]:
    """Frames start, start + stride, ... below stop, decoded after a seek to the keyframe before `start`.

    Frame indices come from presentation timestamps (index = round(time * fps)), which is exact for
    constant-rate video. If the stream has no timestamps or the seek lands past `start`, decoding
    restarts from the beginning and counts frames instead.
    """
    import av

    with av.open(str(path), mode="r") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or stream.base_rate)
        time_base = stream.time_base
        origin = stream.start_time or 0
        use_seek = start > 0 and time_base is not None
        if use_seek:
            container.seek(origin + int((start - 0.5) / fps / time_base), stream=stream, backward=True)
        index = -1
        for position, frame in enumerate(container.decode(stream)):
            if frame.pts is None or time_base is None:
                if use_seek and position == 0:
                    break  # no timestamps to place frames after a seek: fall back to counting from 0
                index += 1
                time_s = index / fps
            else:
                time_s = float((frame.pts - origin) * time_base)
                index = round(time_s * fps)
                if use_seek and position == 0 and index > start:
                    break  # the seek overshot the chunk start
            if index < start:
                continue
            if index >= stop:
                return
            if (index - start) % frame_stride == 0:
                yield DecodedFrame(index=index, time_s=round(time_s, 6), image=frame.to_ndarray(format="rgb24"))
        else:
            return
    logger.info("decoding %s from its first frame (frames %d..%d cannot be reached by seeking)", path, start, stop)
    yield from _iter_frames_counting(path, start, stop, frame_stride)


def _iter_frames_counting(path: str | Path, start: int, stop: int, frame_stride: int) -> Iterator[DecodedFrame]:
    import av

    with av.open(str(path), mode="r") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or stream.base_rate)
        for index, frame in enumerate(container.decode(stream)):
            if index >= stop:
                return
            if index >= start and (index - start) % frame_stride == 0:
                yield DecodedFrame(index=index, time_s=round(index / fps, 6), image=frame.to_ndarray(format="rgb24"))


def prefetch(items: Iterable[Item], depth: int) -> Iterator[Item]:
    """Produce items in a background thread, at most `depth` ahead, so decoding overlaps with inference.

    Exceptions of the producer are raised in the consumer; closing the generator early stops the thread.
    """
    buffer: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        buffer.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(("end", None))
        except BaseException as exc:  # handed to the consumer
            buffer.put(("error", exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # a generator releases what it holds (an open video file) in this thread

    thread = threading.Thread(target=produce, name="video-decode", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = buffer.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


class AdaptiveBatcher:
    """Groups frames into batches sized so that one forward pass takes about `target_s`.

    Interactive image jobs are served between video batches, so a long batch delays them. On a fast device
    the size reaches `max_batch` at once; on a slow one (a CPU) batches shrink until one takes about
    `target_s`, which bounds the wait of an image request. The first batch holds a single frame to measure.
    """

    def __init__(self, max_batch: int, target_s: float) -> None:
        self.max_batch = max(1, max_batch)
        self.target_s = target_s
        self.size = 1
        self.seconds_per_frame: float | None = None

    def observe(self, frames: int, seconds: float) -> None:
        """Record how long a batch of `frames` took and size the next one."""
        per_frame = seconds / max(frames, 1)
        previous = self.seconds_per_frame
        self.seconds_per_frame = per_frame if previous is None else 0.5 * previous + 0.5 * per_frame
        fitting = int(self.target_s / self.seconds_per_frame) if self.seconds_per_frame > 0 else self.max_batch
        self.size = min(self.max_batch, max(1, fitting))

    def batches(self, items: Iterable[Item]) -> Iterator[list[Item]]:
        iterator = iter(items)
        while True:
            batch = [item for _, item in zip(range(self.size), iterator, strict=False)]
            if not batch:
                return
            yield batch


# ----------------------------------------------------------------------------------------------- chunk


def run_chunk(payload: dict[str, Any], context: VideoContext) -> dict[str, Any]:
    """Detect on one chunk's frames and write its result file; see the module docstring."""
    prefix, job_id, index = payload["prefix"], payload["job_id"], int(payload["index"])
    start, stop = int(payload["start"]), int(payload["stop"])
    if should_stop(context.connection, prefix, job_id):
        logger.info("video %s chunk %d skipped: the job was canceled or has failed", job_id, index)
        return {"index": index, "stopped": True}
    state = read_job_state(context.connection, prefix, job_id)
    if state is None:
        return {"index": index, "stopped": True}
    set_status(context.connection, prefix, job_id, JobStatus.STARTED)
    try:
        return _detect_chunk(context, state, prefix, job_id, index, start, stop)
    except Exception as exc:
        if should_stop(context.connection, prefix, job_id):
            logger.info("video %s chunk %d ended by cancel (%s)", job_id, index, exc)
            return {"index": index, "stopped": True}
        message = f"chunk {index} (frames {start}..{stop}) failed: {type(exc).__name__}: {exc}"
        set_status(context.connection, prefix, job_id, JobStatus.FAILED, error=message)
        logger.exception("video %s %s", job_id, message)
        raise


def check_frame_budget(context: VideoContext, info: VideoInfo, params: dict[str, Any]) -> None:
    """Refuse a job whose frames would not fit MASENET_MAX_INPUT_PIXELS (accepted before a worker was alive)."""
    if context.model is None or context.max_input_pixels is None:
        return
    wanted = DetectParams(imgsz=params.get("imgsz"), pixel_scale=params.get("pixel_scale"), tta=params.get("tta"))
    problem = over_input_budget(
        "the video's frames", info.width, info.height, wanted, context.model, context.max_input_pixels
    )
    if problem:
        raise ValueError(problem)


def _detect_chunk(
    context: VideoContext, state: dict[str, Any], prefix: str, job_id: str, index: int, start: int, stop: int
) -> dict[str, Any]:
    if context.detector is None:
        raise RuntimeError("this worker has no model loaded")
    params = state["params"]
    check_frame_budget(context, VideoInfo.from_dict(state["video"]), params)
    stride = int(params.get("frame_stride", 1))
    started = time.perf_counter()
    input_path = context.storage.job_dir(job_id) / state["input_name"]
    frames: list[dict[str, Any]] = []
    decoded = prefetch(iter_frames(input_path, start, stop, stride), depth=2 * context.max_batch)
    batcher = AdaptiveBatcher(context.max_batch, context.batch_time_target_s)
    try:
        for batch in batcher.batches(decoded):
            batch_started = time.perf_counter()
            detections = context.detector.detect(
                [frame.image for frame in batch],
                conf=float(params.get("conf", 0.25)),
                iou=float(params.get("iou", 0.45)),
                max_det=int(params.get("max_det", 300)),
                imgsz=params.get("imgsz"),
                pixel_scale=params.get("pixel_scale"),
                tta=params.get("tta"),
            )
            if len(detections) != len(batch):
                raise RuntimeError(f"the detector returned {len(detections)} results for {len(batch)} frames")
            for frame, found in zip(batch, detections, strict=True):
                frames.append({"index": frame.index, "time_s": frame.time_s, "detections": found})
            batcher.observe(len(batch), time.perf_counter() - batch_started)
            add_progress(context.connection, prefix, job_id, len(batch), chunk=index)
            if context.frames_processed is not None:
                context.frames_processed(len(batch))
            if should_stop(context.connection, prefix, job_id):
                logger.info("video %s chunk %d stopped after %d frames (canceled)", job_id, index, len(frames))
                return {"index": index, "stopped": True, "frames": len(frames)}
            if context.between_batches is not None:
                context.between_batches()
    finally:
        decoded.close()
    elapsed = time.perf_counter() - started
    result = {
        "index": index,
        "start": start,
        "stop": stop,
        "worker": context.worker_name,
        "elapsed_s": round(elapsed, 4),
        "frames": frames,
    }
    write_json_atomic(context.storage.chunk_path(job_id, index), result)
    logger.info(
        "video %s chunk %d: %d frames in %.2f s on %s", job_id, index, len(frames), elapsed, context.worker_name
    )
    return {"index": index, "frames": len(frames), "worker": context.worker_name, "elapsed_s": round(elapsed, 4)}


# -------------------------------------------------------------------------------------------- finalize


def merge_chunks(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All chunks' frame entries in frame order; a frame index present twice is an error."""
    frames = sorted((frame for chunk in chunks for frame in chunk["frames"]), key=lambda frame: frame["index"])
    for earlier, later in zip(frames, frames[1:], strict=False):
        if earlier["index"] == later["index"]:
            raise ValueError(f"frame {later['index']} appears in two chunks")
    return frames


def assign_track_ids(frames: list[dict[str, Any]], enabled: bool, config: TrackerConfig | None = None) -> None:
    """Set `track_id` on every detection in place (None everywhere when tracking is off)."""
    if enabled:
        ids, _ = track_sequence([frame["detections"] for frame in frames], config=config)
    else:
        ids = [[None] * len(frame["detections"]) for frame in frames]
    for frame, frame_ids in zip(frames, ids, strict=True):
        for detection, track_id in zip(frame["detections"], frame_ids, strict=True):
            detection["track_id"] = track_id


def finalize(payload: dict[str, Any], context: VideoContext) -> dict[str, Any]:
    """Merge, track, render and finish the job; fails it clearly when a chunk did not deliver."""
    prefix, job_id = payload["prefix"], payload["job_id"]
    connection = context.connection
    state = read_job_state(connection, prefix, job_id)
    if state is None or state["status"] == JobStatus.CANCELED.value:
        return {"job_id": job_id, "status": JobStatus.CANCELED.value}
    if state["status"] == JobStatus.FAILED.value:
        return {"job_id": job_id, "status": JobStatus.FAILED.value}
    storage = context.storage
    try:
        missing = [i for i in range(len(state["chunks"])) if not storage.chunk_path(job_id, i).is_file()]
        if missing:
            error = f"chunks {missing} did not finish (worker lost or job interrupted); submit the video again"
            set_status(connection, prefix, job_id, JobStatus.FAILED, error=error)
            return {"job_id": job_id, "status": JobStatus.FAILED.value, "error": error}
        set_status(connection, prefix, job_id, JobStatus.STARTED)
        chunks = [_read_chunk(storage, job_id, i) for i in range(len(state["chunks"]))]
        frames = merge_chunks(chunks)
        params = state["params"]
        assign_track_ids(frames, enabled=bool(params.get("track", True)))
        info = VideoInfo.from_dict(state["video"])
        result = {
            "video": {"fps": info.fps, "width": info.width, "height": info.height, "frames": info.frames},
            "frames": frames,
            "chunks": [
                {key: chunk[key] for key in ("index", "start", "stop", "worker", "elapsed_s")} for chunk in chunks
            ],
        }
        write_json_atomic(storage.result_path(job_id), result)
        if params.get("annotate"):
            render_annotated(
                storage.job_dir(job_id) / state["input_name"],
                storage.annotated_path(job_id),
                frames,
                frame_stride=int(params.get("frame_stride", 1)),
            )
    except Exception as exc:
        if should_stop(connection, prefix, job_id):
            return {"job_id": job_id, "status": JobStatus.CANCELED.value}
        set_status(connection, prefix, job_id, JobStatus.FAILED, error=f"merging the results failed: {exc}")
        logger.exception("video %s: finalize failed", job_id)
        raise
    set_status(connection, prefix, job_id, JobStatus.FINISHED)
    refresh_ttl(connection, prefix, job_id, context.ttl_s)
    logger.info("video %s finished: %d frames", job_id, len(frames))
    return {"job_id": job_id, "status": JobStatus.FINISHED.value, "frames": len(frames)}


def _read_chunk(storage: JobStorage, job_id: str, index: int) -> dict[str, Any]:
    return json.loads(storage.chunk_path(job_id, index).read_text())


# ------------------------------------------------------------------------------------------- rendering

PALETTE = [
    (255, 64, 64),
    (64, 220, 64),
    (80, 160, 255),
    (255, 200, 0),
    (255, 64, 255),
    (0, 230, 230),
    (255, 140, 40),
    (180, 120, 255),
]
UNTRACKED_COLOUR = (200, 200, 200)


def render_annotated(
    input_path: str | Path,
    output_path: str | Path,
    frames: list[dict[str, Any]],
    frame_stride: int = 1,
    trail_length: int = 12,
    min_box_px: int = 14,
) -> None:
    """Write an H.264 (yuv420p) MP4 of the processed frames with boxes, track ids and short trails.

    Tiny targets would be invisible under a box of their own size, so every box is drawn at least
    `min_box_px` wide around its centre. The output runs at fps / frame_stride (one picture per processed
    frame). It is written next to the target and renamed into place when complete.
    """
    import av
    from PIL import Image, ImageDraw

    if not frames:
        raise ValueError("no frames to render")
    output_path = Path(output_path)
    temporary = output_path.with_name(f".{output_path.name}.tmp.mp4")
    detections_by_index = {frame["index"]: frame["detections"] for frame in frames}
    trails: dict[int, deque[tuple[float, float]]] = {}
    with av.open(str(input_path), mode="r") as source:
        source_stream = source.streams.video[0]
        fps = float(source_stream.average_rate or source_stream.guessed_rate or source_stream.base_rate)
        width, height = source_stream.codec_context.width, source_stream.codec_context.height
    width, height = width - width % 2, height - height % 2  # yuv420p needs even sides
    with av.open(str(temporary), mode="w", format="mp4") as target:
        stream = target.add_stream("libx264", rate=Fraction(fps / frame_stride).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        last_index = max(detections_by_index) + 1
        for decoded in iter_frames(input_path, 0, last_index, frame_stride):
            image = Image.fromarray(decoded.image[:height, :width])
            _draw_detections(ImageDraw.Draw(image), detections_by_index.get(decoded.index, []), trails, min_box_px)
            for track_id in list(trails):
                if len(trails[track_id]) > trail_length:
                    trails[track_id].popleft()
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")):
                target.mux(packet)
        for packet in stream.encode():
            target.mux(packet)
    temporary.replace(output_path)


def _draw_detections(
    draw: Any, detections: list[dict[str, Any]], trails: dict[int, deque[tuple[float, float]]], min_box_px: int
) -> None:
    for detection in detections:
        x1, y1, x2, y2 = (float(value) for value in detection["box"])
        cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        half_width = max((x2 - x1) / 2.0, min_box_px / 2.0) + 1.0
        half_height = max((y2 - y1) / 2.0, min_box_px / 2.0) + 1.0
        track_id = detection.get("track_id")
        colour = UNTRACKED_COLOUR if track_id is None else PALETTE[(int(track_id) - 1) % len(PALETTE)]
        draw.rectangle([cx - half_width, cy - half_height, cx + half_width, cy + half_height], outline=colour, width=2)
        if track_id is None:
            continue
        draw.text((cx - half_width, cy - half_height - 11), str(track_id), fill=colour)
        trail = trails.setdefault(int(track_id), deque())
        trail.append((cx, cy))
        if len(trail) > 1:
            draw.line(list(trail), fill=colour, width=1)
