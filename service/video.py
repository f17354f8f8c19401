"""Receiving a video: the multipart upload streamed to storage under a byte cap, then probed with PyAV.

The upload is written part by part into the job's directory (never held whole in memory); anything that is
not one part named `video` is refused. The probe opens the file with PyAV, describes its first video stream
and decodes one frame, so only videos a worker can decode are accepted.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from jobs.store import JobStorage
from jobs.video import VideoInfo
from service.errors import InvalidParameters, ServiceError, UploadTooLarge

VIDEO_FIELD = "video"
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries and part headers on top of the video itself
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mpg", ".mpeg", ".h264", ".264"}
STILL_IMAGE_FORMATS = {"image2", "image2pipe"}


class VideoProbeError(Exception):
    """The file is not a video this service can decode (not a video, corrupt, or without a video stream)."""


class UploadTooLargeError(Exception):
    """An upload went past the byte limit while it was being written."""


def video_limit_message(size: int, max_bytes: int) -> str:
    return (
        f"the upload is {size} bytes, above the limit of {max_bytes} bytes (MASENET_MAX_VIDEO_BYTES): "
        "send a shorter or smaller video"
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


def safe_suffix(filename: str | None) -> str:
    """A known video file extension taken from the client's file name, or '' (FFmpeg probes the content)."""
    suffix = Path(filename or "").suffix.lower()
    return suffix if suffix in VIDEO_SUFFIXES else ""


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


@dataclass
class ReceivedVideo:
    path: Path
    size: int


class VideoUploadReader:
    """Streams the `video` part of a multipart body into a file under a byte cap; other parts are refused."""

    def __init__(self, boundary: bytes, storage: JobStorage, job_id: str, max_bytes: int) -> None:
        self.storage, self.job_id, self.max_bytes = storage, job_id, max_bytes
        self.body_bytes = 0
        self.finished = False
        self.received: ReceivedVideo | None = None
        self._headers: dict[str, bytes] = {}  # raw values: a UTF-8 file name must reach the parser as bytes
        self._field, self._value = bytearray(), bytearray()
        self._writer: UploadWriter | None = None
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
                "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    async def read(self, chunks: AsyncIterator[bytes]) -> ReceivedVideo:
        try:
            async for chunk in chunks:
                self.body_bytes += len(chunk)
                if self.body_bytes > self.max_bytes + MULTIPART_OVERHEAD_BYTES:
                    raise UploadTooLargeError(f"the upload is larger than the limit of {self.max_bytes} bytes")
                self._parser.write(chunk)
            self._parser.finalize()
        except UploadTooLargeError as exc:
            raise UploadTooLarge(f"{exc} (MASENET_MAX_VIDEO_BYTES): send a shorter or smaller video") from exc
        except (ServiceError, ClientDisconnect):
            raise
        except Exception as exc:
            raise InvalidParameters(f"malformed multipart body: {exc}") from exc
        finally:
            self._close_writer(failed=self.received is None)
        if not self.finished:
            raise InvalidParameters("the multipart body ended early: the upload was cut off")
        if self.received is None:
            raise InvalidParameters(f"no video in the request: send the file in a multipart part named '{VIDEO_FIELD}'")
        return self.received

    def _on_part_begin(self) -> None:
        self._headers = {}

    def _on_header_end(self) -> None:
        self._headers[self._field.decode("latin-1").strip().lower()] = bytes(self._value).strip()
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get("content-disposition"))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if disposition != b"form-data" or name != VIDEO_FIELD:
            raise InvalidParameters(
                f"unexpected form field {name!r}: send the video in a part named '{VIDEO_FIELD}' and the options "
                "as query parameters"
            )
        if self.received is not None or self._writer is not None:
            raise InvalidParameters("one video per job: send a single part named 'video'")
        filename = options.get(b"filename", b"").decode("utf-8", "replace")
        path = self.storage.input_path(self.job_id, safe_suffix(filename))
        self._writer = UploadWriter(path, self.max_bytes).__enter__()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._writer is not None:
            self._writer.write(bytes(data[start:end]))

    def _on_part_end(self) -> None:
        if self._writer is not None:
            self.received = ReceivedVideo(path=self._writer.path, size=self._writer.size)
            self._close_writer(failed=False)

    def _on_end(self) -> None:
        self.finished = True

    def _close_writer(self, failed: bool) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            error = RuntimeError("upload aborted") if failed else None
            writer.__exit__(type(error) if error else None, error, None)
