"""The reaper: gives the video work of a dead worker to the live ones.

A video chunk (or a video's finalize step) runs inside one worker for seconds to minutes. If that worker
dies (SIGKILL, out of memory, its host gone), rq would keep the job "started" until its timeout, an hour,
and the video would sit unfinished. Every worker with a loaded model runs a reaper thread: every
REAP_INTERVAL_S it looks at the video queue's started jobs, and one whose worker's heartbeat
record has been missing on two passes in a row (so a worker that only blinked is left alone) is abandoned.
It is put back at the front of the queue, with what it had counted in the video's progress taken back, up to
VIDEO_RETRIES times; after that it fails through rq and the video job fails with the reason, so the finalize
step still runs and the job ends either way. Image jobs are the API's to retry (service/queueing.py): a
request is waiting on them.
"""

from __future__ import annotations

import logging
import threading

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from jobs.abandoned import fail, holder_gone, requeue, retries_of
from jobs.settings import Settings
from service.video import CHUNK_KIND, JobStatus, set_status, take_back_progress

logger = logging.getLogger(__name__)

REAP_INTERVAL_S = 5.0
VIDEO_RETRIES = 2


class Reaper:
    """Finds the video queue's jobs held by dead workers and retries or fails them (see the module docstring)."""

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.connection = connection
        self.settings = settings
        self.queue = Queue(settings.video_queue, connection=connection, serializer=JSONSerializer)
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
        while not self._stop.wait(REAP_INTERVAL_S):
            try:
                self.reap()
            except redis.RedisError as exc:
                logger.warning("reaper: %s", exc)
            except Exception:
                logger.exception("reaper pass failed")

    def reap(self) -> list[str]:
        """One pass; returns the ids of the jobs it retried or failed."""
        abandoned = []
        for job_id in self.queue.started_job_registry.get_job_ids(cleanup=False):
            try:
                job = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
            except NoSuchJobError:
                continue
            if holder_gone(self.connection, job, self.settings.worker_key):
                abandoned.append(job)
        found = {job.id for job in abandoned}
        confirmed = [job for job in abandoned if job.id in self.suspects]
        self.suspects = found - {job.id for job in confirmed}
        for job in confirmed:
            self.recover(job)
        return [job.id for job in confirmed]

    def recover(self, job: Job) -> None:
        payload = (job.args or [{}])[0]
        prefix, video_id = payload.get("prefix", self.settings.queue_prefix), payload.get("job_id")
        what = f"video {video_id} {job.description or job.id}"
        if retries_of(job) < VIDEO_RETRIES:
            if (job.meta or {}).get("kind") == CHUNK_KIND and video_id is not None:
                take_back_progress(self.connection, prefix, video_id, int(payload["index"]))
            logger.warning("%s: worker %s died while running it; retrying it", what, job.worker_name)
            requeue(self.queue, job)
            return
        detail = f"worker {job.worker_name} died while running it, after {retries_of(job)} retries"
        logger.error("%s: %s; failing the video job", what, detail)
        if video_id is not None:
            set_status(self.connection, prefix, video_id, JobStatus.FAILED, error=f"{job.description}: {detail}")
        fail(self.queue, job, detail)
