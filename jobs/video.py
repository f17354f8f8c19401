"""The video job contract: parameters, rq payloads, state and result, typed once for the API and the workers.

A video job is cut into chunks of frames; each chunk is an rq job on `<prefix>:video` (`ChunkPayload`), and a
finalize job (`FinalizePayload`) that depends on all chunks merges their results (`ChunkResult` files) into
the `VideoJobResult`. The job's state (`VideoState`) lives in the Redis hash `<prefix>:video:<job_id>`; the
files live under the storage root (see `jobs.store`).

Job ids are UUID4 hex strings made by the server; every id coming from a client is checked against a strict
pattern before it is used to build a key or a path.
"""

from __future__ import annotations

import re
import uuid
from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from jobs.contracts import Detection, InferenceParams, JobKind

JOB_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


class InvalidJobIdError(ValueError):
    """A job id that the server cannot have made (wrong length or characters)."""


def new_job_id() -> str:
    """A fresh job id: 32 lowercase hex digits of a random UUID4."""
    return uuid.uuid4().hex


def validate_job_id(job_id: str) -> str:
    """Return the id unchanged if the server could have made it; raise InvalidJobIdError otherwise."""
    if not isinstance(job_id, str) or JOB_ID_PATTERN.fullmatch(job_id) is None:
        raise InvalidJobIdError("unknown job id")
    return job_id


class VideoStatus(str, Enum):
    """Life cycle of a video job; the last three are final."""

    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        return self in (VideoStatus.FINISHED, VideoStatus.FAILED, VideoStatus.CANCELED)


class VideoParams(InferenceParams):
    """The query of POST /jobs: how frames are detected, which frames, and what is made of them."""

    frame_stride: int = Field(1, ge=1, le=1000, description="process every Nth frame")
    track: bool = Field(True, description="link detections into tracks with stable track_id")
    annotate: bool = Field(False, description="also render an annotated MP4 (GET /jobs/{id}/video)")


class VideoInfo(BaseModel):
    """What the service knows about an uploaded video (probed before it is accepted)."""

    model_config = ConfigDict(frozen=True)

    fps: float
    width: int
    height: int
    frames: int
    duration_s: float
    codec: str


class ChunkPayload(BaseModel):
    """One chunk job: source frames [start, stop) of a video job."""

    kind: Literal[JobKind.VIDEO_CHUNK] = JobKind.VIDEO_CHUNK
    prefix: str
    job_id: str
    index: int = Field(ge=0)
    start: int = Field(ge=0)
    stop: int = Field(ge=0)


class FinalizePayload(BaseModel):
    """The job that merges, tracks and renders once every chunk has ended."""

    kind: Literal[JobKind.VIDEO_FINALIZE] = JobKind.VIDEO_FINALIZE
    prefix: str
    job_id: str


VIDEO_PAYLOAD: TypeAdapter[ChunkPayload | FinalizePayload] = TypeAdapter(
    Annotated[ChunkPayload | FinalizePayload, Field(discriminator="kind")]
)


def parse_video_payload(raw: object) -> ChunkPayload | FinalizePayload | None:
    """The payload of a video rq job, or None if it is not one."""
    try:
        return VIDEO_PAYLOAD.validate_python(raw)
    except ValidationError:
        return None


class JobProgress(BaseModel):
    frames_done: int = Field(description="processed frames so far")
    frames_total: int = Field(description="frames the job processes (every frame_stride-th frame)")


class JobState(BaseModel):
    """What GET /jobs/{job_id} answers."""

    job_id: str
    status: VideoStatus
    progress: JobProgress
    error: str | None = Field(None, description="why the job failed, or null")
    created_at: str | None = Field(None, description="ISO 8601, UTC")
    started_at: str | None = None
    ended_at: str | None = None


class JobAccepted(BaseModel):
    job_id: str
    status_url: str = Field(description="poll this for progress: GET /jobs/{job_id}")


class VideoState(JobState):
    """The whole job hash: the public state plus what the workers need to run the job."""

    chunks: list[tuple[int, int]] = Field(default_factory=list, description="(start, stop) source frames per chunk")
    params: VideoParams = Field(default_factory=VideoParams)
    video: VideoInfo
    input_name: str = ""

    def public(self) -> JobState:
        """The state as answered to clients (progress capped at the total)."""
        progress = JobProgress(
            frames_done=min(self.progress.frames_done, self.progress.frames_total),
            frames_total=self.progress.frames_total,
        )
        return JobState.model_validate(self.model_dump(include=set(JobState.model_fields)) | {"progress": progress})


class TrackedDetection(Detection):
    track_id: int | None = Field(None, description="stable id of the target's track; null if untracked")


class FrameResult(BaseModel):
    index: int = Field(description="frame number in the source video, from 0")
    time_s: float = Field(description="presentation time of the frame")
    detections: list[TrackedDetection]


class ChunkResult(BaseModel):
    """One chunk's result file, written by whichever worker ran it."""

    index: int
    start: int
    stop: int
    worker: str
    elapsed_s: float
    frames: list[FrameResult]


class VideoSummary(BaseModel):
    fps: float
    width: int
    height: int
    frames: int


class VideoJobResult(BaseModel):
    """GET /jobs/{job_id}/result: the merged detections, in frame order, with track ids."""

    video: VideoSummary
    frames: list[FrameResult] = Field(description="one entry per processed frame, in order")


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
