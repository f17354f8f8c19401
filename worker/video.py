"""The video handlers of a worker: chunks through the same batching path as images, then finalize.

A chunk decodes source frames [start, stop) of the stored upload in a reader thread (seek to the keyframe
before `start`, decode forward, keep every `frame_stride`-th frame). The worker's thread collects them with
`collect_batch` (views counted, sized by `AdaptiveBatcher` so that one pass stays short), copies them to the
device and runs them through `InferenceRuntime.run`, the step image jobs use, with the same stage metrics.
After every batch it counts progress, stops if the job was canceled, and lets the worker serve the image
jobs that arrived meanwhile. The chunk's `ChunkResult` is written to storage.

Finalize runs once every chunk job has ended (rq dependency with failures allowed). It fails the video job if
a chunk is missing, otherwise merges the chunks in frame order, tracks targets over the whole sequence,
writes the `VideoJobResult`, renders the annotated MP4 when asked, and marks the job finished.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from jobs.contracts import DetectParams, InferenceParams
from jobs.store import VideoJobStore, write_json_atomic
from jobs.video import (
    ChunkPayload,
    ChunkResult,
    FinalizePayload,
    FrameResult,
    TrackedDetection,
    VideoJobResult,
    VideoState,
    VideoStatus,
    VideoSummary,
)
from model.tracking import TrackerConfig, track_sequence
from worker.batching import AdaptiveBatcher, collect_batch, pair_outputs
from worker.frames import iter_frames
from worker.render import render_annotated
from worker.runtime import DecodedImage, FrameTask, Outcome

logger = logging.getLogger(__name__)

READ_POLL_S = 0.05  # how often the batching loop looks again when the reader has nothing yet
READER_EXIT_S = 10.0  # how long a chunk waits for its reader thread to stop


class FrameInference(Protocol):
    """What a chunk needs of the worker's inference: `worker.runtime.InferenceRuntime` satisfies it."""

    def upload(self, frame: np.ndarray, started: float | None = None) -> DecodedImage: ...

    def views(self, task: Any) -> int: ...

    def run(self, tasks: Any) -> list[Outcome]: ...


class ChunkStopped(Exception):
    """The video job was canceled or failed elsewhere while this chunk ran."""


class FrameReader:
    """Decodes a chunk's frames (PyAV only) in a thread into a bounded queue of `FrameTask`s (a context manager)."""

    def __init__(self, path: Any, payload: ChunkPayload, stride: int, params: DetectParams, depth: int) -> None:
        self.pending: queue.Queue[FrameTask] = queue.Queue(maxsize=max(1, depth))
        self.error: BaseException | None = None
        self._args = (path, payload.start, payload.stop, stride)
        self._params = params
        self._done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="video-decode", daemon=True)

    def __enter__(self) -> FrameReader:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        deadline = time.monotonic() + READER_EXIT_S
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:
                self.pending.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)
        if self._thread.is_alive():  # stuck inside the decoder: a daemon thread, left to end with the process
            logger.warning("the frame reader did not stop within %g s; leaving it behind", READER_EXIT_S)

    def finished(self) -> bool:
        """True once every frame was handed over; raises what the reader raised."""
        if self.error is not None:
            raise self.error
        return self._done.is_set() and self.pending.empty()

    def _read(self) -> None:
        frames = iter_frames(*self._args)
        try:
            for frame in frames:
                task = FrameTask(
                    index=frame.index,
                    time_s=frame.time_s,
                    params=self._params,
                    image=frame.image,
                    picked_at=time.time(),
                    enqueued_at=time.time(),
                )
                while not self._stop.is_set():
                    try:
                        self.pending.put(task, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # handed to the batching loop
            self.error = exc
        finally:
            frames.close()  # releases the open video file in this thread
            self._done.set()


@dataclass
class VideoJobs:
    """A worker's video handlers; `between_batches` lets it serve waiting image jobs during a chunk."""

    store: VideoJobStore
    inference: FrameInference
    worker_name: str
    max_images: int = 8  # images per forward pass, views counted (MASENET_MAX_BATCH)
    max_delay_s: float = 0.005
    batch_time_target_s: float = 0.1  # a chunk's batches are sized to take about this long
    between_batches: Callable[[], None] | None = None
    frames_processed: Callable[[int], None] | None = None  # metrics hook: frames run through the model

    # chunk
    def run_chunk(self, payload: ChunkPayload) -> dict[str, Any]:
        """Detect on one chunk's frames and write its result file; see the module docstring."""
        store, job_id, index = self.store, payload.job_id, payload.index
        state = None if store.should_stop(job_id) else store.read(job_id)
        if state is None:
            logger.info("video %s chunk %d skipped: the job was canceled, has failed or is gone", job_id, index)
            return {"index": index, "stopped": True}
        store.set_status(job_id, VideoStatus.STARTED)
        try:
            result = self._detect(state, payload)
        except ChunkStopped:
            logger.info("video %s chunk %d stopped: the job was canceled or has failed", job_id, index)
            return {"index": index, "stopped": True}
        except Exception as exc:
            if store.should_stop(job_id):
                logger.info("video %s chunk %d ended by cancel (%s)", job_id, index, exc)
                return {"index": index, "stopped": True}
            message = f"chunk {index} (frames {payload.start}..{payload.stop}) failed: {type(exc).__name__}: {exc}"
            store.set_status(job_id, VideoStatus.FAILED, error=message)
            logger.exception("video %s %s", job_id, message)
            raise
        try:
            store.storage.write_chunk(job_id, result)
        except OSError:
            if not store.should_stop(job_id):
                raise
            return {"index": index, "stopped": True}  # canceled at the last moment: its folder is gone
        logger.info(
            "video %s chunk %d: %d frames in %.2f s on %s",
            job_id,
            index,
            len(result.frames),
            result.elapsed_s,
            self.worker_name,
        )
        return {"index": index, "frames": len(result.frames), "worker": self.worker_name, "elapsed_s": result.elapsed_s}

    def _detect(self, state: VideoState, payload: ChunkPayload) -> ChunkResult:
        started = time.perf_counter()
        params = DetectParams(**state.params.model_dump(include=set(InferenceParams.model_fields)))
        frames: list[FrameResult] = []
        batcher = AdaptiveBatcher(self.max_images, self.batch_time_target_s)
        path = self.store.input_path(state)
        carry: FrameTask | None = None
        with FrameReader(path, payload, state.params.frame_stride, params, 2 * self.max_images) as reader:
            while carry is not None or not reader.finished():
                batch = collect_batch(
                    reader.pending,
                    batcher.size,
                    self.max_delay_s,
                    weight=self.inference.views,
                    first_timeout_s=READ_POLL_S,
                    carry=carry,
                )
                carry = batch.carry
                if batch.items:
                    tick = time.perf_counter()
                    frames += self._run(batch.items)
                    batcher.observe(batch.size, time.perf_counter() - tick)
                    self._after_batch(payload, len(batch.items))
        elapsed = round(time.perf_counter() - started, 4)
        return ChunkResult(
            index=payload.index,
            start=payload.start,
            stop=payload.stop,
            worker=self.worker_name,
            elapsed_s=elapsed,
            frames=frames,
        )

    def _run(self, tasks: list[FrameTask]) -> list[FrameResult]:
        """One pass through the worker's inference step; a frame that fails fails the chunk with its reason."""
        for task in tasks:
            if not task.decoded.done():
                task.decoded.set_result(self.inference.upload(task.image))
        results = []
        for task, outcome in pair_outputs(tasks, self.inference.run(tasks), "run"):
            if outcome.failure is not None or outcome.result is None:
                detail = outcome.failure.detail if outcome.failure is not None else "no result"
                raise RuntimeError(f"{task.name}: {detail}")
            detections = [TrackedDetection(**found.model_dump()) for found in outcome.result.detections]
            results.append(FrameResult(index=task.index, time_s=task.time_s, detections=detections))
        return results

    def _after_batch(self, payload: ChunkPayload, frames: int) -> None:
        self.store.add_progress(payload.job_id, frames, chunk=payload.index)
        if self.frames_processed is not None:
            self.frames_processed(frames)
        if self.store.should_stop(payload.job_id):
            raise ChunkStopped
        if self.between_batches is not None:
            self.between_batches()

    # finalize
    def finalize(self, payload: FinalizePayload) -> dict[str, Any]:
        """Merge, track, render and finish the job; fails it clearly when a chunk did not deliver."""
        store, storage, job_id = self.store, self.store.storage, payload.job_id
        state = store.read(job_id)
        if state is None or state.status in (VideoStatus.CANCELED, VideoStatus.FAILED):
            status = VideoStatus.CANCELED if state is None else state.status
            return {"job_id": job_id, "status": status.value}
        try:
            missing = [i for i in range(len(state.chunks)) if not storage.chunk_path(job_id, i).is_file()]
            if missing:
                error = f"chunks {missing} did not finish (worker lost or job interrupted); submit the video again"
                store.set_status(job_id, VideoStatus.FAILED, error=error)
                store.expire_rq_keys(state)
                return {"job_id": job_id, "status": VideoStatus.FAILED.value, "error": error}
            store.set_status(job_id, VideoStatus.STARTED)
            frames = merge_chunks([storage.read_chunk(job_id, i) for i in range(len(state.chunks))])
            assign_track_ids(frames, enabled=state.params.track)
            video = VideoSummary(**state.video.model_dump(include={"fps", "width", "height", "frames"}))
            write_json_atomic(storage.result_path(job_id), VideoJobResult(video=video, frames=frames))
            if state.params.annotate:
                annotated = storage.annotated_path(job_id)
                render_annotated(store.input_path(state), annotated, frames, frame_stride=state.params.frame_stride)
        except Exception as exc:
            if store.should_stop(job_id):
                return {"job_id": job_id, "status": VideoStatus.CANCELED.value}
            store.set_status(job_id, VideoStatus.FAILED, error=f"merging the results failed: {exc}")
            store.expire_rq_keys(state)
            logger.exception("video %s: finalize failed", job_id)
            raise
        store.set_status(job_id, VideoStatus.FINISHED)
        store.expire_rq_keys(state)
        logger.info("video %s finished: %d frames", job_id, len(frames))
        return {"job_id": job_id, "status": VideoStatus.FINISHED.value, "frames": len(frames)}


def merge_chunks(chunks: list[ChunkResult]) -> list[FrameResult]:
    """All chunks' frames in frame order; a frame index present twice is an error."""
    frames = sorted((frame for chunk in chunks for frame in chunk.frames), key=lambda frame: frame.index)
    for earlier, later in zip(frames, frames[1:], strict=False):
        if earlier.index == later.index:
            raise ValueError(f"frame {later.index} appears in two chunks")
    return frames


def assign_track_ids(frames: list[FrameResult], enabled: bool, config: TrackerConfig | None = None) -> None:
    """Set `track_id` on every detection in place (None everywhere when tracking is off)."""
    if enabled:
        boxes = [[detection.model_dump() for detection in frame.detections] for frame in frames]
        ids, _ = track_sequence(boxes, config=config)
    else:
        ids = [[None] * len(frame.detections) for frame in frames]
    for frame, frame_ids in zip(frames, ids, strict=True):
        for detection, track_id in zip(frame.detections, frame_ids, strict=True):
            detection.track_id = track_id
