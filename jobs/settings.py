"""Service and worker settings, read from `MASENET_*` environment variables.

One class holds every knob of the API and the workers. Nothing reads the environment at import time:
call `get_settings()` (cached) or build `Settings(...)` explicitly, as the tests do.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from jobs.stream_urls import DEFAULT_ALLOW as DEFAULT_STREAM_ALLOW

DEFAULT_MAX_BATCH_GPU = 32
DEFAULT_MAX_BATCH_CPU = 8


class Settings(BaseSettings):
    """Every setting of the detection service; the environment variable is `MASENET_<FIELD NAME>`."""

    model_config = SettingsConfigDict(env_prefix="MASENET_", extra="ignore", frozen=True)

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL; a password goes in the URL")
    queue_prefix: str = Field("masenet", description="prefix of queue names and keys: <prefix>:images, <prefix>:video")

    device: str = Field("auto", description="worker device: auto (CUDA if present), cpu, cuda, cuda:N")
    weights: Path | None = Field(None, description="checkpoint path; unset means the shipped default weights")
    half: bool = Field(False, description="bfloat16 inference; off means float32 on every device (see model.detector)")
    compile: bool = Field(False, description="torch.compile the network in the worker")
    imgsz: int | None = Field(
        None, ge=32, le=2048, multiple_of=32, description="default inference size (pixels); unset: the checkpoint's"
    )
    tta: Literal["off", "mirror", "flips"] | None = Field(
        None,
        description="test-time augmentation: off (or false), mirror (or true: each frame averaged with its mirror, "
        "twice the compute), flips (all four flips, four times); unset: the checkpoint's (shipped weights: off)",
    )

    runtime: Literal["auto", "torch", "openvino", "onnxruntime"] = Field(
        "auto",
        description="worker forward-pass runtime: auto (OpenVINO on the CPU when installed, torch on CUDA), torch, "
        "openvino or onnxruntime (CPU only); Grad-CAM always uses torch",
    )
    max_batch: int | None = Field(
        None, ge=1, le=1024, description="images per forward pass (each frame's tta views count); unset: 32 GPU, 8 CPU"
    )
    max_delay_ms: float = Field(5.0, ge=0, le=10_000, description="how long a worker waits to fill a batch")
    max_queue: int = Field(1024, ge=0, description="503 when the image queue would hold more images than this")
    timeout_s: float = Field(30.0, gt=0, le=3600, description="504 when a request has no result after this long")

    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1, description="413 when a request body is larger")
    max_pixels: int = Field(40_000_000, ge=1, description="413 when one image has more pixels (width * height)")
    max_input_pixels: int = Field(
        12_000_000,
        ge=1024,
        description="413 when one frame would fill more network-input pixels than this once resized, test-time "
        "views counted, Grad-CAM 11 times (a 1280x1024 frame at pixel scale 1.5 fills 2.95 million, four views 11.8 "
        "million; about 205 bytes of worker memory per pixel, 2.4 GB at the limit)",
    )
    max_pass_pixels: int = Field(
        48_000_000,
        ge=1024,
        description="a worker splits a forward pass so that its frames together cost at most this, counted as "
        "MASENET_MAX_INPUT_PIXELS counts (about 10 GB of activations: sized for a 24 GB CPU host; an 80 GB GPU "
        "can take 200 million)",
    )
    max_images_per_request: int = Field(32, ge=1, description="413 when a request carries more images")

    idle_timeout_s: float = Field(30.0, gt=0, description="the API closes a connection that sends nothing this long")
    header_timeout_s: float = Field(
        10.0, gt=0, description="the API closes a connection whose request headers take longer"
    )
    body_grace_s: float = Field(10.0, ge=0, description="a request body may start slowly for this long ...")
    body_min_rate: int = Field(
        1024, ge=1, description="... then must average at least this many bytes/s, or the connection is closed (499)"
    )

    drain_s: float = Field(5.0, ge=0, description="on SIGTERM the API answers /readyz 503 this long before it stops")
    shutdown_grace_s: float = Field(20.0, ge=0, description="then in-flight requests get this long to finish")

    key_requests_per_minute: int = Field(
        600, ge=1, description="with API keys on: 429 when one key sends more requests than this in a minute"
    )
    key_max_images_in_flight: int = Field(
        256, ge=1, description="with API keys on: 429 when one key would have more images queued or running"
    )

    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="comma-separated bearer keys; empty turns authentication off"
    )
    worker_metrics_port: int = Field(9101, ge=0, le=65535, description="worker /metrics port; 0 picks a free one")

    storage: Path = Field(Path("runs/storage"), description="where uploaded videos and their results are written")
    job_ttl_s: int = Field(24 * 3600, ge=1, description="how long video jobs and their results are kept")
    max_video_bytes: int = Field(2 * 1024**3, ge=1, description="413 when a video upload is larger")
    max_video_seconds: float = Field(3600.0, gt=0, description="413 when a video is longer")
    max_video_pixels: int = Field(4096 * 2160, ge=1, description="413 when a video frame has more pixels")
    video_chunk_frames: int = Field(256, ge=1, description="frames per video chunk job (the unit workers share)")
    interactive_linger_ms: float = Field(
        100.0,
        ge=0,
        le=10_000,
        description="after serving images between video batches, wait this long for more (once the video had its "
        "share)",
    )
    pass_target_ms: float = Field(
        250.0,
        gt=0,
        le=60_000,
        description="a forward pass grows only while its measured time would stay under this (its first frame always "
        "goes), so a cheap request never waits long behind a pass",
    )

    stream_allow: str = Field(
        DEFAULT_STREAM_ALLOW,
        description="camera hosts streams may open: addresses, CIDRs or host names, comma-separated, * for any; "
        "link-local and cloud-metadata addresses are always refused (default: the private networks)",
    )
    max_streams: int = Field(64, ge=0, description="429 when POST /streams would make more live streams than this")
    max_streams_per_worker: int = Field(8, ge=0, description="live streams one worker holds at most (0: none)")
    stream_ttl_s: int = Field(3600, ge=1, description="how long a stopped or failed stream's state and events are kept")
    stream_events_max: int = Field(1000, ge=10, description="events kept per stream for late readers (Last-Event-ID)")
    stream_connect_attempts: int = Field(
        3, ge=1, description="a camera that never delivered a frame fails after this many connection attempts"
    )
    stream_retry_s: float = Field(
        300.0, gt=0, description="a camera that was running fails after reconnecting this long without a frame"
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_api_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @field_validator("tta", mode="before")
    @classmethod
    def _tta_switch(cls, value: object) -> object:
        """The on/off form works too: true, 1, yes or on mean mirror; false, 0, no or off mean off; empty is unset."""
        if value is None:
            return None
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return "mirror"
        if text in ("false", "0", "no", "off", "none"):
            return "off"
        return text or None

    @field_validator("queue_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value or any(character.isspace() for character in value):
            raise ValueError("queue prefix must be a non-empty word without spaces")
        return value

    def effective_max_batch(self, on_gpu: bool) -> int:
        """MASENET_MAX_BATCH when set, else the device default (32 on GPU, 8 on CPU)."""
        if self.max_batch is not None:
            return self.max_batch
        return DEFAULT_MAX_BATCH_GPU if on_gpu else DEFAULT_MAX_BATCH_CPU

    @property
    def image_queue(self) -> str:
        return f"{self.queue_prefix}:images"

    @property
    def video_queue(self) -> str:
        return f"{self.queue_prefix}:video"

    @property
    def workers_key_pattern(self) -> str:
        return f"{self.queue_prefix}:workers:*"

    def worker_key(self, worker_name: str) -> str:
        return f"{self.queue_prefix}:workers:{worker_name}"

    def data_key(self, job_id: str) -> str:
        return f"{self.queue_prefix}:data:{job_id}"

    def reply_key(self, request_id: str) -> str:
        return f"{self.queue_prefix}:reply:{request_id}"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @property
    def redis_display_url(self) -> str:
        """The Redis URL with any password masked, for messages and logs."""
        return mask_url_password(self.redis_url)


def mask_url_password(url: str) -> str:
    """Replace the password of a URL with '***' so it can be printed."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}{port}", parts.path, parts.query, parts.fragment))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
