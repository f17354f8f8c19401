"""The live stream contract: request, state, events, typed once for the API and the workers.

A stream is a camera URL watched continuously by one worker. The API writes the stream's record; workers
claim unheld streams under a lease and report into the record; events go to a capped Redis stream that the
API relays as server-sent events (see `jobs.stream_store` for the keys).
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from jobs.contracts import InferenceParams
from jobs.video import JOB_ID_PATTERN, TrackedDetection, new_job_id

MAX_STREAM_FPS = 60.0


class InvalidStreamIdError(ValueError):
    """A stream id the server cannot have made."""


def new_stream_id() -> str:
    """A fresh stream id: made like a job id (32 lowercase hex digits of a random UUID4)."""
    return new_job_id()


def validate_stream_id(stream_id: str) -> str:
    """Return the id unchanged if the server could have made it; raise InvalidStreamIdError otherwise."""
    if not isinstance(stream_id, str) or JOB_ID_PATTERN.fullmatch(stream_id) is None:
        raise InvalidStreamIdError("unknown stream id")
    return stream_id


class StreamStatus(str, Enum):
    """Life cycle of a stream; the last two are final."""

    STARTING = "starting"  # waiting for a worker, or a worker is connecting
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (StreamStatus.STOPPED, StreamStatus.FAILED)


class StreamParams(InferenceParams):
    """How a stream's frames are detected: the inference parameters, the frame rate cap and tracking."""

    fps: float = Field(
        5.0,
        gt=0.0,
        le=MAX_STREAM_FPS,
        description="the most frames per second to process; the others are dropped, the newest frame wins",
    )
    track: bool = Field(True, description="link detections into tracks with stable track_id per stream")


class StreamRequest(StreamParams):
    """The JSON body of POST /streams."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=2048,
        description="the camera: rtsp://, rtsps://, http:// or https:// (MJPEG, MPEG-TS or anything FFmpeg reads)",
        examples=["rtsp://user:password@192.168.1.20:554/stream1"],
    )

    def params(self) -> StreamParams:
        return StreamParams(**self.model_dump(include=set(StreamParams.model_fields)))


class StreamAccepted(BaseModel):
    stream_id: str
    status_url: str = Field(description="GET this for the stream's state")
    events_url: str = Field(description="GET this for server-sent events, one per processed frame")


class Latency(BaseModel):
    """Capture-to-event latency over the last processed frames, in milliseconds."""

    p50: float | None = None
    p95: float | None = None


class StreamStats(BaseModel):
    """The counters the holding worker reports; a worker taking the stream over continues them."""

    frames_read: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    fps_in: float = 0.0
    fps_processed: float = 0.0
    latency_ms: Latency = Field(default_factory=Latency)
    reconnects: int = 0
    width: int | None = None
    height: int | None = None


class StreamState(StreamStats):
    """What GET /streams/{id} answers."""

    stream_id: str
    url: str = Field(description="the camera URL with credentials and query values redacted")
    status: StreamStatus
    worker: str | None = Field(None, description="the worker holding the stream")
    error: str | None = None
    created_at: float
    started_at: float | None = Field(None, description="when the first frame was read")
    params: StreamParams


class StreamList(BaseModel):
    streams: list[StreamState]


class EventType(str, Enum):
    FRAME = "frame"
    TRACK_STARTED = "track_started"
    TRACK_ENDED = "track_ended"
    STATUS = "status"


class FrameEvent(BaseModel):
    """One processed frame."""

    frame_index: int = Field(description="position of the frame among the frames read from the camera")
    time_s: float = Field(description="the frame's time in the camera's stream")
    captured_at: float = Field(description="unix time the frame was read from the camera")
    detections: list[TrackedDetection]


class TrackEvent(BaseModel):
    """A track confirmed (track_started) or lost (track_ended)."""

    track_id: int
    class_id: int
    frame_index: int
    time_s: float
    box: list[float] | None = Field(None, description="the box that confirmed the track (track_started)")


class StatusEvent(BaseModel):
    status: StreamStatus
    error: str | None = None
