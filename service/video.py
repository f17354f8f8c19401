"""Video jobs without torch: probing, storage layout, streamed uploads, chunk planning and job state.

A video job is cut into chunks of frames; each chunk is an rq job on the `<prefix>:video` queue, and a
finalize job that depends on all chunks merges their results. Everything a job needs to survive an API
restart lives in Redis (the hash `<prefix>:video:<job_id>`) and in the job's directory under the storage
root:

    <storage>/<job_id>/input<suffix>         the upload, as received
    <storage>/<job_id>/chunks/00003.json     one result file per chunk, written by whichever worker ran it
    <storage>/<job_id>/result.json           the merged result (frames in order, with track ids)
    <storage>/<job_id>/annotated.mp4         the rendered video, when asked for

Job ids are UUID4 hex strings made by the server; every id coming from a client is checked against a
strict pattern before it is used to build a path, so `../x` or an overlong id never reaches the file system.
A job directory is removed `ttl_s` seconds after its last write (`cleanup_expired`), and the Redis hash
expires on the same schedule.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

logger = logging.getLogger(__name__)

JOB_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mpg", ".mpeg", ".h264", ".264"}
STILL_IMAGE_FORMATS = {"image2", "image2pipe"}


class VideoError(Exception):
    """Base class for errors of video jobs."""


class VideoProbeError(VideoError):
    """The file is not a video this service can decode (not a video, corrupt, or without a video stream)."""


class UploadTooLargeError(VideoError):
    """An upload went past the byte limit while it was being written."""


class InvalidJobIdError(VideoError):
    """A job id that the server cannot have made (wrong length or characters)."""


class JobStatus(str, Enum):
    """Life cycle of a video job; the last three are final."""

    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL_STATUSES = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED})


# ----------------------------------------------------------------------------------------------- probing


@dataclass(frozen=True)
class VideoInfo:
    """What the service needs to know about an uploaded video before accepting it."""

    fps: float
    width: int
    height: int
    frames: int
    duration_s: float
    codec: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoInfo:
        return cls(
            fps=float(data["fps"]),
            width=int(data["width"]),
            height=int(data["height"]),
            frames=int(data["frames"]),
            duration_s=float(data["duration_s"]),
            codec=str(data["codec"]),
        )


def probe_video(path: str | Path) -> VideoInfo:
    """Open a file with PyAV and describe its first video stream; decodes one frame to prove it is readable.

    Raises VideoProbeError with a message a user can act on for anything that is not a decodable video.
    """
    import av  # PyAV is only needed by the processes that handle videos

    try:
        with av.open(str(path), mode="r") as container:
            if container.format.name in STILL_IMAGE_FORMATS or container.format.name.endswith("_pipe"):
                raise VideoProbeError(f"the file is a still image ({container.format.name}), not a video")
            if not container.streams.video:
                raise VideoProbeError("the file has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            if not math.isfinite(fps) or fps <= 0:
                raise VideoProbeError("the video has no usable frame rate")
            codec = stream.codec_context.name
            width, height = int(stream.codec_context.width), int(stream.codec_context.height)
            frames = int(stream.frames or 0)
            duration_s = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
            first = next(iter(container.decode(stream)), None)
            if first is None:
                raise VideoProbeError("the video stream holds no decodable frame")
            width, height = width or first.width, height or first.height
            if frames <= 0:
                frames = _count_packets(path)
    except VideoProbeError:
        raise
    except Exception as exc:  # PyAV raises many types (FFmpeg errors, OSError, ValueError) for bad input
        reason = getattr(exc, "strerror", None) or str(exc).replace(str(path), "<upload>")  # no server paths
        raise VideoProbeError(f"cannot read the file as a video ({reason})") from exc
    if frames <= 0 or width <= 0 or height <= 0:
        raise VideoProbeError("the video has no frames")
    if duration_s <= 0:
        duration_s = frames / fps
    return VideoInfo(fps=fps, width=width, height=height, frames=frames, duration_s=duration_s, codec=codec)


def _count_packets(path: str | Path) -> int:
    """Frame count for containers that do not store one: demux (no decoding) and count video packets."""
    import av

    with av.open(str(path), mode="r") as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


# ------------------------------------------------------------------------------------- ids and storage


def new_job_id() -> str:
    """A fresh job id: 32 lowercase hex digits of a random UUID4."""
    return uuid.uuid4().hex


def validate_job_id(job_id: str) -> str:
    """Return the id unchanged if the server could have made it; raise InvalidJobIdError otherwise."""
    if not isinstance(job_id, str) or JOB_ID_PATTERN.fullmatch(job_id) is None:
        raise InvalidJobIdError("unknown job id")
    return job_id


def safe_suffix(filename: str | None) -> str:
    """A known video file extension taken from the client's file name, or '' (FFmpeg probes the content)."""
    suffix = Path(filename or "").suffix.lower()
    return suffix if suffix in VIDEO_SUFFIXES else ""


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

    def find_input(self, job_id: str) -> Path:
        """The stored upload, whatever suffix it was saved with."""
        matches = sorted(self.job_dir(job_id).glob("input*"))
        if not matches:
            raise FileNotFoundError(f"no input file for job {job_id}")
        return matches[0]

    def chunk_path(self, job_id: str, index: int) -> Path:
        return self.job_dir(job_id) / "chunks" / f"{index:05d}.json"

    def result_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "result.json"

    def annotated_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "annotated.mp4"

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


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON next to the target and rename it into place, so readers never see half a file."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    temporary.write_text(json.dumps(data, separators=(",", ":")))
    temporary.replace(path)


class UploadWriter:
    """Writes an upload to disk piece by piece and refuses to go past max_bytes.

    Use as a context manager: if the block raises (the cap, a client that disconnects), the partial file
    is deleted.
    """

    def __init__(self, path: str | Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.size = 0
        self._handle: BinaryIO | None = None

    def __enter__(self) -> UploadWriter:
        self._handle = open(self.path, "xb")  # noqa: SIM115 (closed in __exit__)
        return self

    def write(self, data: bytes) -> None:
        if self._handle is None:
            raise RuntimeError("UploadWriter.write outside its with block")
        if self.size + len(data) > self.max_bytes:
            raise UploadTooLargeError(f"the upload is larger than the limit of {self.max_bytes} bytes")
        self._handle.write(data)
        self.size += len(data)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if exc_type is not None:
            self.path.unlink(missing_ok=True)


def write_stream(pieces: Iterable[bytes], path: str | Path, max_bytes: int) -> int:
    """Write an iterable of byte pieces to a new file with a byte cap; returns the size written."""
    with UploadWriter(path, max_bytes) as writer:
        for piece in pieces:
            writer.write(piece)
    return writer.size


# ------------------------------------------------------------------------------------------ chunk plan


def processed_frame_count(frames_total: int, frame_stride: int) -> int:
    """Frames 0, stride, 2*stride, ... below frames_total."""
    return -(-frames_total // frame_stride) if frames_total > 0 else 0


def plan_chunks(frames_total: int, frame_stride: int, chunk_frames: int) -> list[tuple[int, int]]:
    """Split source frames [0, frames_total) into (start, stop) ranges of chunk_frames PROCESSED frames each.

    Every range starts on a multiple of frame_stride, so the frames a chunk processes (start, start +
    stride, ... below stop) are exactly the global sequence 0, stride, 2*stride, ...; only the last range
    may be shorter.
    """
    if frame_stride < 1 or chunk_frames < 1:
        raise ValueError("frame_stride and chunk_frames must be at least 1")
    span = frame_stride * chunk_frames
    return [(start, min(start + span, frames_total)) for start in range(0, max(frames_total, 0), span)]


# ------------------------------------------------------------------------------------ state in Redis


def job_key(prefix: str, job_id: str) -> str:
    return f"{prefix}:video:{job_id}"


def chunk_rq_id(job_id: str, index: int) -> str:
    return f"{job_id}-chunk-{index:05d}"


def finalize_rq_id(job_id: str) -> str:
    return f"{job_id}-finalize"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


# Moves a job to a new status only forward: queued -> started -> final, never out of a final status.
# KEYS[1] = job hash; ARGV = new status, timestamp, error ('' for none). Returns 1 if the status changed.
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
end
return 1
"""


def create_job_state(
    connection: Any,
    prefix: str,
    job_id: str,
    *,
    info: VideoInfo,
    params: dict[str, Any],
    chunks: list[tuple[int, int]],
    frames_total: int,
    input_name: str,
    ttl_s: int,
) -> None:
    """Write the job hash in status `queued` (with a TTL so abandoned state disappears on its own)."""
    key = job_key(prefix, job_id)
    mapping = {
        "job_id": job_id,
        "status": JobStatus.QUEUED.value,
        "created_at": utc_now(),
        "frames_done": 0,
        "frames_total": frames_total,
        "chunks_total": len(chunks),
        "chunks": json.dumps(chunks),
        "params": json.dumps(params),
        "video": json.dumps(info.to_dict()),
        "input_name": input_name,
    }
    with connection.pipeline() as pipe:
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, ttl_s)
        pipe.execute()


def read_job_state(connection: Any, prefix: str, job_id: str) -> dict[str, Any] | None:
    """The job hash decoded into plain values, or None for an unknown (or expired) job."""
    raw = connection.hgetall(job_key(prefix, job_id))
    if not raw:
        return None
    fields = {_text(name): _text(value) for name, value in raw.items()}
    return {
        "job_id": fields.get("job_id", job_id),
        "status": fields.get("status", JobStatus.QUEUED.value),
        "progress": {
            "frames_done": int(fields.get("frames_done") or 0),
            "frames_total": int(fields.get("frames_total") or 0),
        },
        "error": fields.get("error") or None,
        "created_at": fields.get("created_at"),
        "started_at": fields.get("started_at"),
        "ended_at": fields.get("ended_at"),
        "chunks": [tuple(chunk) for chunk in json.loads(fields.get("chunks") or "[]")],
        "params": json.loads(fields.get("params") or "{}"),
        "video": json.loads(fields.get("video") or "{}"),
        "input_name": fields.get("input_name") or "",
    }


def set_status(connection: Any, prefix: str, job_id: str, status: JobStatus, error: str | None = None) -> bool:
    """Move the job forward to `status` (atomically; a final status is never left). True if it changed."""
    changed = connection.eval(_TRANSITION_SCRIPT, 1, job_key(prefix, job_id), status.value, utc_now(), error or "")
    return bool(changed)


def add_progress(connection: Any, prefix: str, job_id: str, frames: int, chunk: int | None = None) -> int:
    """Count processed frames (also per chunk, so a retried chunk's count can be taken back); the new frames_done."""
    key = job_key(prefix, job_id)
    if chunk is None:
        return int(connection.hincrby(key, "frames_done", frames))
    with connection.pipeline(transaction=True) as pipeline:
        pipeline.hincrby(key, "frames_done", frames)
        pipeline.hincrby(key, f"chunk_frames:{chunk}", frames)
        return int(pipeline.execute()[0])


_TAKE_BACK_SCRIPT = """
local counted = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if counted > 0 then redis.call('HINCRBY', KEYS[1], 'frames_done', -counted) end
redis.call('HDEL', KEYS[1], ARGV[1])
return counted
"""


def take_back_progress(connection: Any, prefix: str, job_id: str, chunk: int) -> int:
    """Remove what one chunk counted from frames_done (before the chunk runs again); returns the frames taken."""
    return int(connection.eval(_TAKE_BACK_SCRIPT, 1, job_key(prefix, job_id), f"chunk_frames:{chunk}"))


def current_status(connection: Any, prefix: str, job_id: str) -> JobStatus | None:
    """The job's status, or None if the job is unknown (deleted or expired)."""
    value = _text(connection.hget(job_key(prefix, job_id), "status"))
    return JobStatus(value) if value else None


def should_stop(connection: Any, prefix: str, job_id: str) -> bool:
    """True when work on the job should stop: canceled, failed, or its state is gone."""
    return current_status(connection, prefix, job_id) in (None, JobStatus.CANCELED, JobStatus.FAILED)


def refresh_ttl(connection: Any, prefix: str, job_id: str, ttl_s: int) -> None:
    connection.expire(job_key(prefix, job_id), ttl_s)


# ------------------------------------------------------------------------------------------ rq jobs

CHUNK_FUNCTION = "worker.video.chunk_job"
FINALIZE_FUNCTION = "worker.video.finalize_job"
CHUNK_KIND = "video_chunk"
FINALIZE_KIND = "video_finalize"


def video_queue_name(prefix: str) -> str:
    return f"{prefix}:video"


def enqueue_video_job(
    connection: Any, prefix: str, job_id: str, chunks: list[tuple[int, int]], *, job_timeout_s: int, ttl_s: int
) -> None:
    """Queue one rq job per chunk and a finalize job that runs once every chunk has ended.

    The finalize job depends on all chunk jobs with failures allowed: rq starts it even when a chunk
    fails or its worker dies, and finalize then fails the video job clearly instead of leaving it hanging.
    Payloads are plain JSON (rq's JSON serializer); rq job ids are derived from the job id, so cancel
    finds them without any extra bookkeeping.
    """
    from rq import Queue
    from rq.job import Dependency
    from rq.serializers import JSONSerializer

    queue = Queue(video_queue_name(prefix), connection=connection, serializer=JSONSerializer)
    common = {"result_ttl": ttl_s, "failure_ttl": ttl_s, "timeout": job_timeout_s}
    chunk_jobs = queue.enqueue_many(
        [
            Queue.prepare_data(
                CHUNK_FUNCTION,
                args=[{"prefix": prefix, "job_id": job_id, "index": index, "start": start, "stop": stop}],
                job_id=chunk_rq_id(job_id, index),
                description=f"video {job_id} chunk {index} frames {start}..{stop}",
                meta={"kind": CHUNK_KIND},
                **common,
            )
            for index, (start, stop) in enumerate(chunks)
        ]
    )
    queue.enqueue(
        FINALIZE_FUNCTION,
        args=[{"prefix": prefix, "job_id": job_id}],
        job_id=finalize_rq_id(job_id),
        description=f"video {job_id} finalize",
        meta={"kind": FINALIZE_KIND},
        depends_on=Dependency(jobs=chunk_jobs, allow_failure=True),
        job_timeout=job_timeout_s,
        result_ttl=ttl_s,
        failure_ttl=ttl_s,
    )


def cancel_video_job(connection: Any, prefix: str, job_id: str, storage: JobStorage) -> bool:
    """Cancel a job: flag it (running chunks stop at their next batch), drop its waiting rq jobs, free storage.

    Returns True if the job existed. A job that already ended keeps its final status but its files are
    still removed (DELETE frees storage in every case).
    """
    from rq.exceptions import InvalidJobOperation, NoSuchJobError
    from rq.job import Job
    from rq.job import JobStatus as RqJobStatus
    from rq.serializers import JSONSerializer

    state = read_job_state(connection, prefix, job_id)
    if state is None:
        return False
    set_status(connection, prefix, job_id, JobStatus.CANCELED, error="canceled by request")
    rq_ids = [chunk_rq_id(job_id, index) for index in range(len(state["chunks"]))] + [finalize_rq_id(job_id)]
    for rq_id in rq_ids:
        try:
            job = Job.fetch(rq_id, connection=connection, serializer=JSONSerializer)
            if job.get_status() in (RqJobStatus.QUEUED, RqJobStatus.DEFERRED, RqJobStatus.SCHEDULED):
                job.cancel()
        except (NoSuchJobError, InvalidJobOperation):
            continue
    storage.remove(job_id)
    return True
