"""Where video jobs live: their files (`JobStorage`) and their state and rq jobs in Redis (`VideoJobStore`).

    <storage>/<job_id>/input<suffix>         the upload, as received
    <storage>/<job_id>/chunks/00003.json     one `ChunkResult` per chunk, written by whichever worker ran it
    <storage>/<job_id>/result.json           the merged `VideoJobResult`
    <storage>/<job_id>/annotated.mp4         the rendered video, when asked for

The job hash `<prefix>:video:<job_id>` holds a `VideoState`; its status only moves forward (queued ->
started -> one final status), atomically, in a Lua script, so a late chunk never revives a canceled job.
Job directories are removed `ttl_s` after their last write, and every Redis key of a job expires on the
same schedule.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from jobs import rqueue
from jobs.contracts import JOB_FUNCTION
from jobs.video import (
    JOB_ID_PATTERN,
    ChunkPayload,
    ChunkResult,
    FinalizePayload,
    JobProgress,
    VideoInfo,
    VideoParams,
    VideoState,
    VideoStatus,
    validate_job_id,
)

logger = logging.getLogger(__name__)


class JobStorage:
    """The per-job directories under one storage root (a local folder or a volume shared by all processes)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def job_dir(self, job_id: str) -> Path:
        return self.root / validate_job_id(job_id)

    def create(self, job_id: str) -> Path:
        """Make the job's directory (and its chunks folder); the id must be new."""
        directory = self.job_dir(job_id)
        self.root.mkdir(parents=True, exist_ok=True)
        directory.mkdir()
        (directory / "chunks").mkdir()
        return directory

    def input_path(self, job_id: str, suffix: str = "") -> Path:
        return self.job_dir(job_id) / f"input{suffix}"

    def chunk_path(self, job_id: str, index: int) -> Path:
        return self.job_dir(job_id) / "chunks" / f"{index:05d}.json"

    def result_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "result.json"

    def annotated_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "annotated.mp4"

    def write_chunk(self, job_id: str, result: ChunkResult) -> None:
        write_json_atomic(self.chunk_path(job_id, result.index), result)

    def read_chunk(self, job_id: str, index: int) -> ChunkResult:
        return ChunkResult.model_validate_json(self.chunk_path(job_id, index).read_bytes())

    def remove(self, job_id: str) -> bool:
        """Delete the job's directory; False if it was already gone."""
        directory = self.job_dir(job_id)
        existed = directory.exists()
        shutil.rmtree(directory, ignore_errors=True)
        return existed

    def cleanup_expired(self, ttl_s: float, now: float | None = None) -> list[str]:
        """Remove job directories whose last write is older than ttl_s; returns the removed ids.

        Only entries named like job ids are touched; anything else under the root is left alone.
        """
        if not self.root.is_dir():
            return []
        deadline = (time.time() if now is None else now) - ttl_s
        removed: list[str] = []
        for entry in self.root.iterdir():
            if not entry.is_dir() or JOB_ID_PATTERN.fullmatch(entry.name) is None:
                continue
            if _last_write(entry) < deadline:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        if removed:
            logger.info("removed %d expired video job directories", len(removed))
        return removed


def _last_write(directory: Path) -> float:
    """Newest modification time of a job directory and the files in it (two levels deep)."""
    newest = directory.stat().st_mtime
    for path in (*directory.iterdir(), *(directory / "chunks").glob("*")):
        try:
            newest = max(newest, path.stat().st_mtime)
        except FileNotFoundError:
            continue
    return newest


def write_json_atomic(path: Path, data: BaseModel) -> None:
    """Write a model as JSON next to the target and rename it into place, so readers never see half a file."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    temporary.write_text(data.model_dump_json())
    temporary.replace(path)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def chunk_rq_id(job_id: str, index: int) -> str:
    return f"{job_id}-chunk-{index:05d}"


def finalize_rq_id(job_id: str) -> str:
    return f"{job_id}-finalize"


def outcomes_key(prefix: str) -> str:
    """A hash counting video jobs by outcome (accepted, finished, failed, canceled) over all APIs and workers."""
    return f"{prefix}:video-outcomes"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


# Moves a job to a new status only forward: queued -> started -> final, never out of a final status, and counts
# each final status once in the outcome hash. KEYS = job hash, outcome hash; ARGV = new status, timestamp, error
# ('' for none). Returns 1 if the status changed.
_TRANSITION_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
if current == 'finished' or current == 'failed' or current == 'canceled' then return 0 end
local target = ARGV[1]
if target == current then return 0 end
if target == 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'status', target)
if target == 'started' then
  redis.call('HSETNX', KEYS[1], 'started_at', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'ended_at', ARGV[2])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
  redis.call('HINCRBY', KEYS[2], target, 1)
end
return 1
"""

# Counts a chunk's processed frames, only while the job exists (never recreating an expired or deleted hash).
_PROGRESS_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HINCRBY', KEYS[1], ARGV[2], ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'frames_done', ARGV[1])
"""

_TAKE_BACK_SCRIPT = """
local counted = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if counted > 0 then redis.call('HINCRBY', KEYS[1], 'frames_done', -counted) end
redis.call('HDEL', KEYS[1], ARGV[1])
return counted
"""


class VideoJobStore:
    """Video jobs in Redis and on disk: create, read, move forward, count progress, queue, cancel.

    `connection` is a redis-py client with bytes responses (as rq uses it); `ttl_s` is MASENET_JOB_TTL_S.
    """

    def __init__(self, connection: Any, prefix: str, storage: JobStorage, ttl_s: int) -> None:
        self.connection = connection
        self.prefix = prefix
        self.storage = storage
        self.ttl_s = ttl_s

    @property
    def queue_name(self) -> str:
        return f"{self.prefix}:video"

    def key(self, job_id: str) -> str:
        return f"{self.prefix}:video:{job_id}"

    @property
    def outcomes_key(self) -> str:
        return outcomes_key(self.prefix)

    def outcomes(self) -> dict[str, int]:
        return {_text(name): int(count) for name, count in self.connection.hgetall(self.outcomes_key).items()}

    # state
    def create(
        self,
        job_id: str,
        *,
        info: VideoInfo,
        params: VideoParams,
        chunks: list[tuple[int, int]],
        frames_total: int,
        input_name: str,
    ) -> None:
        """Write the job hash in status `queued` (with a TTL so abandoned state disappears on its own)."""
        mapping = {
            "job_id": job_id,
            "status": VideoStatus.QUEUED.value,
            "created_at": utc_now(),
            "frames_done": 0,
            "frames_total": frames_total,
            "chunks": json.dumps(chunks),
            "params": params.model_dump_json(),
            "video": info.model_dump_json(),
            "input_name": input_name,
        }
        with self.connection.pipeline() as pipe:
            pipe.hset(self.key(job_id), mapping=mapping)
            pipe.expire(self.key(job_id), self.ttl_s)
            pipe.hincrby(self.outcomes_key, "accepted", 1)
            pipe.execute()

    def read(self, job_id: str) -> VideoState | None:
        """The job's state, or None for an unknown (or expired) job."""
        raw = self.connection.hgetall(self.key(validate_job_id(job_id)))
        if not raw:
            return None
        fields = {_text(name): _text(value) for name, value in raw.items()}
        if not fields.get("video"):
            return None  # not a job hash the API wrote (a stray key): unknown
        return VideoState(
            job_id=fields.get("job_id") or job_id,
            status=VideoStatus(fields.get("status") or VideoStatus.QUEUED.value),
            progress=JobProgress(
                frames_done=int(fields.get("frames_done") or 0), frames_total=int(fields.get("frames_total") or 0)
            ),
            error=fields.get("error") or None,
            created_at=fields.get("created_at"),
            started_at=fields.get("started_at"),
            ended_at=fields.get("ended_at"),
            chunks=[tuple(chunk) for chunk in json.loads(fields.get("chunks") or "[]")],
            params=VideoParams.model_validate_json(fields.get("params") or "{}"),
            video=VideoInfo.model_validate_json(fields["video"]),
            input_name=fields.get("input_name") or "",
        )

    def input_path(self, state: VideoState) -> Path:
        return self.storage.job_dir(state.job_id) / state.input_name

    def set_status(self, job_id: str, status: VideoStatus, error: str | None = None) -> bool:
        """Move the job forward to `status` (atomically; a final status is never left). True if it changed."""
        keys = (self.key(job_id), self.outcomes_key)
        changed = self.connection.eval(_TRANSITION_SCRIPT, 2, *keys, status.value, utc_now(), error or "")
        return bool(changed)

    def status(self, job_id: str) -> VideoStatus | None:
        """The job's status, or None if the job is unknown (deleted or expired)."""
        value = _text(self.connection.hget(self.key(job_id), "status"))
        return VideoStatus(value) if value else None

    def should_stop(self, job_id: str) -> bool:
        """True when work on the job should stop: canceled, failed, or its state is gone."""
        return self.status(job_id) in (None, VideoStatus.CANCELED, VideoStatus.FAILED)

    def add_progress(self, job_id: str, frames: int, chunk: int) -> int:
        """Count processed frames (also per chunk, so a retried chunk's count can be taken back); the new total,
        or -1 when the job is gone."""
        return int(self.connection.eval(_PROGRESS_SCRIPT, 1, self.key(job_id), frames, f"chunk_frames:{chunk}"))

    def take_back_progress(self, job_id: str, chunk: int) -> int:
        """Remove what one chunk counted from frames_done (before the chunk runs again); the frames taken."""
        return int(self.connection.eval(_TAKE_BACK_SCRIPT, 1, self.key(job_id), f"chunk_frames:{chunk}"))

    def refresh_ttl(self, job_id: str) -> None:
        self.connection.expire(self.key(job_id), self.ttl_s)

    # rq
    def enqueue(self, job_id: str, chunks: list[tuple[int, int]], job_timeout_s: int) -> None:
        """Queue one rq job per chunk and a finalize job that runs once every chunk has ended.

        The finalize job depends on all chunk jobs with failures allowed: rq starts it even when a chunk
        fails or its worker dies, and finalize then fails the video job clearly instead of leaving it hanging.
        Payloads are JSON (rq's JSON serializer); rq job ids derive from the job id, so cancel finds them.
        """
        target = rqueue.queue(self.connection, self.queue_name)
        lifetimes = {"timeout": job_timeout_s, "result_ttl": self.ttl_s, "failure_ttl": self.ttl_s}
        chunk_jobs = rqueue.enqueue(
            target,
            [
                rqueue.NewJob(
                    JOB_FUNCTION,
                    self._payload(ChunkPayload, job_id=job_id, index=index, start=start, stop=stop),
                    job_id=chunk_rq_id(job_id, index),
                    description=f"video {job_id} chunk {index} frames {start}..{stop}",
                    **lifetimes,
                )
                for index, (start, stop) in enumerate(chunks)
            ],
        )
        finalize = rqueue.NewJob(
            JOB_FUNCTION,
            self._payload(FinalizePayload, job_id=job_id),
            job_id=finalize_rq_id(job_id),
            description=f"video {job_id} finalize",
            **lifetimes,
        )
        rqueue.enqueue_after(target, finalize, chunk_jobs)

    def _payload(self, model: type[BaseModel], **fields: Any) -> dict[str, Any]:
        return model(prefix=self.prefix, **fields).model_dump(mode="json")

    def rq_ids(self, state: VideoState) -> list[str]:
        return [chunk_rq_id(state.job_id, index) for index in range(len(state.chunks))] + [finalize_rq_id(state.job_id)]

    def cancel(self, job_id: str) -> bool:
        """Cancel a job: flag it (running chunks stop at their next batch), drop its waiting rq jobs, free storage.

        Returns True if the job existed. A job that already ended keeps its final status but its files are
        still removed (DELETE frees storage in every case), and every rq key of the job expires with the state.
        """
        state = self.read(job_id)
        if state is None:
            return False
        self.set_status(job_id, VideoStatus.CANCELED, error="canceled by request")
        for rq_id in self.rq_ids(state):  # a chunk a worker already took stops at its next pass (canceled flag)
            rqueue.cancel_waiting(self.connection, rq_id)
        self.expire_rq_keys(state)
        self.storage.remove(job_id)
        return True

    def expire_rq_keys(self, state: VideoState) -> None:
        """Give every rq key of the job (job hashes, dependents, dependencies) the job's TTL."""
        keys = [self.key(state.job_id)]
        for rq_id in self.rq_ids(state):
            keys += rqueue.job_keys(rq_id)
        with self.connection.pipeline(transaction=False) as pipeline:
            for key in keys:
                pipeline.expire(key, self.ttl_s)
            pipeline.execute()
