"""The reaper: gives the video work of a dead worker to the live ones.

A video chunk (or a video's finalize step) runs inside one worker for seconds to minutes. If that worker
dies (SIGKILL, out of memory, its host gone), rq would keep the job "started" until its timeout, an hour,
and the video would sit unfinished. Every worker with a loaded model runs a reaper thread: every
REAP_INTERVAL_S it looks at the video queue's started jobs, and one whose worker's heartbeat
record has been missing on two passes in a row (so a worker that only blinked is left alone) is abandoned.
It is put back at the front of the queue, with what it had counted in the video's progress taken back, up to
VIDEO_RETRIES times; after that it fails through rq and the video job fails with the reason, so the finalize
step still runs and the job ends either way. Image jobs are the API's to retry (service/queueing.py): a
request is waiting on them. Once a minute the reaper also removes video job directories older than
MASENET_JOB_TTL_S from the shared storage.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis

from jobs import rqueue
from jobs.settings import Settings
from jobs.store import JobStorage, VideoJobStore
from jobs.video import ChunkPayload, VideoStatus, parse_video_payload

logger = logging.getLogger(__name__)

REAP_INTERVAL_S = 5.0
CLEANUP_EVERY = 12  # reaper passes between two sweeps of expired video job directories (a minute)
VIDEO_RETRIES = 2


class Reaper:
    """Finds the video queue's jobs held by dead workers and retries or fails them (see the module docstring)."""

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings
        self.queue = rqueue.queue(connection, settings.video_queue)
        self.store = VideoJobStore(connection, settings.queue_prefix, JobStorage(settings.storage), settings.job_ttl_s)
        self.suspects: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        passes = 0
        while not self._stop.wait(REAP_INTERVAL_S):
            passes += 1
            try:
                self.reap()
                if passes % CLEANUP_EVERY == 0:
                    self.store.storage.cleanup_expired(self.settings.job_ttl_s)
            except (redis.RedisError, OSError) as exc:
                logger.warning("reaper: %s", exc)
            except Exception:
                logger.exception("reaper pass failed")

    def reap(self) -> list[str]:
        """One pass; returns the ids of the jobs it retried or failed."""
        abandoned = []
        for job_id in rqueue.started_job_ids(self.queue):
            job = rqueue.fetch(self.connection, job_id)
            if job is not None and rqueue.holder_gone(self.connection, job, self.settings.worker_key):
                abandoned.append(job)
        found = {job.id for job in abandoned}
        confirmed = [job for job in abandoned if job.id in self.suspects]
        self.suspects = found - {job.id for job in confirmed}
        for job in confirmed:
            self.recover(job)
        return [job.id for job in confirmed]

    def recover(self, job: Any) -> None:
        video = parse_video_payload(rqueue.payload_of(job))
        what = f"video {video.job_id if video else '?'} {job.description or job.id}"
        if rqueue.retries_of(job) < VIDEO_RETRIES:
            if isinstance(video, ChunkPayload):
                self.store.take_back_progress(video.job_id, video.index)
            logger.warning("%s: worker %s died while running it; retrying it", what, job.worker_name)
            rqueue.requeue(self.queue, job)
            return
        detail = f"worker {job.worker_name} died while running it, after {rqueue.retries_of(job)} retries"
        logger.error("%s: %s; failing the video job", what, detail)
        if video is not None:
            self.store.set_status(video.job_id, VideoStatus.FAILED, error=f"{job.description}: {detail}")
        rqueue.fail_abandoned(self.queue, job, detail)
