"""Video jobs as a source of the scheduling loop: one chunk at a time, pulled pass by pass.

    intake     when it runs no chunk, the source pops the next job of the video queue (at most every
               POLL_S): a chunk is started in rq and opened (`ChunkRun`); a finalize step runs in a side
               thread (it merges, tracks and renders without the model, so the device is not held for it);
               a job of another function goes to `foreign`, which the worker runs the rq way
    waiting    the chunk's decoded frames, all in one bucket (one video, one size, one set of parameters)
    run        the loop's chosen pass, one at a time; once every frame ran, the chunk's result is written and
               its job finished in rq (which releases the finalize step after the last chunk)

A chunk that fails fails its job and the video job with the reason; one whose video was canceled stops at its
next pass.
"""

from __future__ import annotations

import logging
import queue
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from jobs import rqueue
from jobs.contracts import JobKind
from jobs.video import ChunkPayload, FinalizePayload
from worker.runtime import FrameTask
from worker.schedule import Waiting, WorkClass
from worker.video import ChunkRun, VideoJobs

logger = logging.getLogger(__name__)

POLL_S = 0.1  # how often an idle video source looks at the video queue


class VideoSource:
    """The video queue of one worker, as the scheduling loop sees it."""

    work_class = WorkClass.VIDEO

    def __init__(
        self,
        rq: rqueue.RqWorker,
        queue_name: str,
        video: VideoJobs,
        runtime: Any,  # worker.runtime.InferenceRuntime: bucket, cost, views
        foreign: queue.Queue[rqueue.Taken],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rq = rq
        self.queue_name = queue_name
        self.video = video
        self.runtime = runtime
        self.foreign = foreign
        self.clock = clock
        self.intake = True
        self.chunk: ChunkRun | None = None
        self._taken: rqueue.Taken | None = None
        self._in_flight = False  # a pass of the chunk runs in a lane
        self._error: BaseException | None = None  # what that pass raised
        self._looked = -float("inf")
        self._finalizer = ThreadPoolExecutor(1, thread_name_prefix="finalize")
        self._finalizing = 0

    @property
    def busy(self) -> bool:
        return self.chunk is not None or self._finalizing > 0

    def close(self) -> None:
        if self.chunk is not None:
            self.chunk.close()
        self._finalizer.shutdown(wait=True)

    # the loop's side (its thread), but `run`
    def waiting(self, now: float) -> list[Waiting]:
        if self.chunk is None:
            self._take_next()
        chunk = self.chunk
        if chunk is None or self._in_flight:
            return []  # one pass of a chunk at a time, and its outcome is known before the next
        if self._error is not None:
            self._end(self._error)
            return []
        try:
            frames = chunk.ready()
            if chunk.done:
                self._end()
                return []
        except Exception as exc:
            self._end(exc)
            return []
        return [self._waiting(frame) for frame in frames]

    def take(self, items: Sequence[Waiting]) -> tuple[ChunkRun, list[FrameTask]]:
        assert self.chunk is not None
        frames = [item.ref for item in items]
        self.chunk.take(frames)
        self._in_flight = True
        return self.chunk, frames

    def run(self, taken: tuple[ChunkRun, list[FrameTask]]) -> None:
        """A lane's thread: one pass of the chunk; an error is kept for the loop thread to conclude with."""
        chunk, frames = taken
        try:
            chunk.run(frames)
        except Exception as exc:
            self._error = exc
        finally:
            self._in_flight = False

    def _waiting(self, frame: FrameTask) -> Waiting:
        height, width = frame.image.shape[:2]
        bucket = self.runtime.bucket(frame.params, width, height)
        cost = self.runtime.cost(frame.params, width, height)
        return Waiting(self.work_class, bucket, frame.picked_at, self.runtime.views(frame), cost, ref=frame)

    # intake
    def _take_next(self) -> None:
        if not self.intake or self.clock() - self._looked < POLL_S:
            return
        self._looked = self.clock()
        try:
            taken = self.rq.pop(self.queue_name)
        except redis.RedisError as exc:
            logger.warning("worker %s: cannot pop video jobs: %s", self.rq.name, exc)
            return
        if taken is None:
            return
        if taken.kind is None:
            self.foreign.put(taken)
        elif taken.kind == JobKind.VIDEO_FINALIZE.value:
            self.rq.start(taken)
            self._finalizing += 1
            self._finalizer.submit(self._finalize, taken)
        elif taken.kind == JobKind.VIDEO_CHUNK.value:
            self._open(taken)
        else:
            self.rq.fail(taken, f"internal: a {taken.kind} job on the video queue")

    def _open(self, taken: rqueue.Taken) -> None:
        self.rq.start(taken)
        try:
            chunk = ChunkRun(self.video, ChunkPayload.model_validate(taken.payload))
            if not chunk.open():
                self.rq.succeed(taken, {"index": chunk.payload.index, "stopped": True})
                return
        except Exception:
            logger.exception("worker %s: video job %s could not start", self.rq.name, taken.job.id)
            self.rq.fail(taken, traceback.format_exc())
            return
        self.chunk, self._taken = chunk, taken

    def _end(self, error: BaseException | None = None) -> None:
        """Record the running chunk's outcome in rq and let it go."""
        chunk, taken = self.chunk, self._taken
        assert chunk is not None and taken is not None
        self.chunk = self._taken = self._error = None
        chunk.close()
        try:
            result = chunk.conclude(error)
        except Exception:
            self._record(self.rq.fail, taken, traceback.format_exc())
            return
        self._record(self.rq.succeed, taken, result)

    def _finalize(self, taken: rqueue.Taken) -> None:
        try:
            result = self.video.finalize(FinalizePayload.model_validate(taken.payload))
        except Exception:
            logger.exception("worker %s: finalize %s failed", self.rq.name, taken.job.description)
            self._record(self.rq.fail, taken, traceback.format_exc())
        else:
            self._record(self.rq.succeed, taken, result)
        finally:
            self._finalizing -= 1

    def _record(self, record: Callable[[rqueue.Taken, Any], None], taken: rqueue.Taken, outcome: Any) -> None:
        try:
            record(taken, outcome)
        except Exception:  # Redis gone for longer than the retries: the reaper recovers the job
            logger.exception("worker %s: could not record the outcome of job %s", self.rq.name, taken.job.id)
