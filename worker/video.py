"""The video work of a worker: chunks pulled pass by pass through the inference step images use, then finalize.

A chunk (`ChunkRun`) decodes source frames [start, stop) of the stored upload in a reader thread (seek to the
keyframe before `start`, decode forward, keep every `frame_stride`-th frame). Whoever drives it (the worker's
scheduling loop, worker/loop.py, or `VideoJobs.run_chunk` alone) takes passes of its decoded frames, which are
copied to the device and run through `InferenceRuntime.run` with the same stage metrics as images. After
every pass it counts progress and stops if the job was canceled. The chunk's `ChunkResult` is written to
storage.

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
    VideoStatus,
    VideoSummary,
)
from model.tracking import TrackerConfig, track_sequence
from worker.batching import pair_outputs
from worker.frames import iter_frames
from worker.render import render_annotated
from worker.runtime import DecodedImage, FrameTask, Outcome
from worker.schedule import Pass, Policy, SchedulerState, Waiting, WorkClass, next_pass

logger = logging.getLogger(__name__)

READ_POLL_S = 0.05  # how long run_chunk waits for the reader before it looks again
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


class ChunkRun:
    """One chunk in progress, pulled from: `ready()` gives the decoded frames not yet run, `take(frames)` and
    `run(frames)` run one pass of them, and once `done`, `conclude()` writes the chunk's result (or says why it
    stopped).

    The worker's scheduling loop pulls passes from it between its other work; `VideoJobs.run_chunk` drives one
    alone, its passes chosen by the same policy (`worker.schedule.next_pass`, a frame's views as its cost).
    """

    def __init__(self, jobs: VideoJobs, payload: ChunkPayload) -> None:
        self.jobs = jobs
        self.payload = payload
        self.frames: list[FrameResult] = []
        self.pending: list[FrameTask] = []
        self.reader: FrameReader | None = None
        self.started = time.perf_counter()

    def open(self) -> bool:
        """Start reading the chunk's frames; False when the job was canceled, has failed or is gone."""
        store, job_id = self.jobs.store, self.payload.job_id
        state = None if store.should_stop(job_id) else store.read(job_id)
        if state is None:
            logger.info(
                "video %s chunk %d skipped: the job was canceled, has failed or is gone", job_id, self.payload.index
            )
            return False
        store.set_status(job_id, VideoStatus.STARTED)
        params = DetectParams(**state.params.model_dump(include=set(InferenceParams.model_fields)))
        path = store.input_path(state)
        depth = 2 * self.jobs.max_images
        self.reader = FrameReader(path, self.payload, state.params.frame_stride, params, depth).__enter__()
        return True

    def ready(self, timeout_s: float = 0.0) -> list[FrameTask]:
        """The decoded frames not yet run, oldest first, waiting up to `timeout_s` for one; raises what the
        reader raised."""
        assert self.reader is not None
        source, room = self.reader.pending, 2 * self.jobs.max_images  # decoded frames held: bounded memory
        try:
            if timeout_s > 0 and not self.pending:
                self.pending.append(source.get(timeout=timeout_s))
            while len(self.pending) < room:
                self.pending.append(source.get_nowait())
        except queue.Empty:
            pass
        self.reader.finished()  # raises the reader's error
        return list(self.pending)

    @property
    def done(self) -> bool:
        return self.reader is not None and not self.pending and self.reader.finished()

    def take(self, tasks: list[FrameTask]) -> None:
        """Take frames out of `ready()`'s list before they run."""
        taken = {id(task) for task in tasks}
        self.pending = [task for task in self.pending if id(task) not in taken]

    def run(self, tasks: list[FrameTask]) -> None:
        """One pass of taken frames; progress counted; ChunkStopped when the job was canceled or failed meanwhile."""
        self.frames += self.jobs.run_frames(tasks)
        store, job_id = self.jobs.store, self.payload.job_id
        store.add_progress(job_id, len(tasks), chunk=self.payload.index)
        if self.jobs.frames_processed is not None:
            self.jobs.frames_processed(len(tasks))
        if store.should_stop(job_id):
            raise ChunkStopped

    def close(self) -> None:
        if self.reader is not None:
            self.reader.__exit__(None, None, None)

    def conclude(self, error: BaseException | None = None) -> dict[str, Any]:
        """The chunk's outcome: its result written (no error), stopped (canceled meanwhile), or the job failed
        with the reason and `error` raised again."""
        store, job_id, index, payload = self.jobs.store, self.payload.job_id, self.payload.index, self.payload
        stopped = {"index": index, "stopped": True}
        if isinstance(error, ChunkStopped):
            logger.info("video %s chunk %d stopped: the job was canceled or has failed", job_id, index)
            return stopped
        if error is not None:
            if store.should_stop(job_id):
                logger.info("video %s chunk %d ended by cancel (%s)", job_id, index, error)
                return stopped
            message = f"chunk {index} (frames {payload.start}..{payload.stop}) failed: {type(error).__name__}: {error}"
            store.set_status(job_id, VideoStatus.FAILED, error=message)
            logger.error("video %s %s", job_id, message)
            raise error
        elapsed = round(time.perf_counter() - self.started, 4)
        result = ChunkResult(
            index=index, start=payload.start, stop=payload.stop, worker=self.jobs.worker_name, elapsed_s=elapsed,
            frames=self.frames,
        )  # fmt: skip
        try:
            store.storage.write_chunk(job_id, result)
        except OSError:
            if not store.should_stop(job_id):
                raise
            return stopped  # canceled at the last moment: its folder is gone
        logger.info("video %s chunk %d: %d frames in %.2f s on %s", job_id, index, len(self.frames), elapsed,
                    self.jobs.worker_name)  # fmt: skip
        return {"index": index, "frames": len(self.frames), "worker": self.jobs.worker_name, "elapsed_s": elapsed}


@dataclass
class VideoJobs:
    """A worker's video work: chunks (`ChunkRun`, or `run_chunk` for one chunk alone) and finalize."""

    store: VideoJobStore
    inference: FrameInference
    worker_name: str
    max_images: int = 8  # images per forward pass, views counted (MASENET_MAX_BATCH)
    pass_target_s: float = 0.1  # run_chunk sizes its passes to take about this long
    frames_processed: Callable[[int], None] | None = None  # metrics hook: frames run through the model

    # chunk
    def run_chunk(self, payload: ChunkPayload) -> dict[str, Any]:
        """Detect on one chunk's frames alone and write its result file; see the module docstring."""
        chunk = ChunkRun(self, payload)
        try:
            if not chunk.open():
                return {"index": payload.index, "stopped": True}
            state, policy = SchedulerState(), Policy(max_images=self.max_images, pass_target_s=self.pass_target_s)
            while not chunk.done:
                waiting = []
                for frame in chunk.ready(timeout_s=READ_POLL_S):
                    views = self.inference.views(frame)  # a frame's cost: the time per cost is then per image
                    waiting.append(Waiting(WorkClass.VIDEO, None, frame.picked_at, views, views, ref=frame))
                chosen = next_pass(waiting, time.time(), state, policy)
                if isinstance(chosen, Pass):
                    batch = [item.ref for item in chosen.items]
                    tick = time.perf_counter()
                    chunk.take(batch)
                    chunk.run(batch)
                    cost = sum(item.cost for item in chosen.items)
                    state.observe(WorkClass.VIDEO, cost, time.perf_counter() - tick, time.time())
        except Exception as exc:
            return chunk.conclude(exc)
        finally:
            chunk.close()
        return chunk.conclude()

    def run_frames(self, tasks: list[FrameTask]) -> list[FrameResult]:
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
