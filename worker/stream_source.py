"""One camera read in a thread: connect, decode, keep the newest frame due under the frame-rate cap, reconnect.

The reader decodes every frame the camera sends (H.264 needs them all) off the inference thread and offers a
frame at most `fps` times a second: it goes into a one-frame slot, replacing a frame not taken yet (newest
wins, the replaced one counts as dropped), and the source is announced on the hub's `ready` queue when the
slot fills. Frames over the cap are dropped right after decoding, before any colour conversion.

A lost connection is retried with backoff after the URL is checked again (its host may now resolve elsewhere).
A camera that never delivered a frame fails after `connect_attempts` tries; one that ran fails after `retry_s`
without a frame. Error messages name what happened, never the remote's words or the URL's credentials.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from jobs.stream_urls import AllowList, StreamUrlError, check_url
from jobs.streams import StreamStatus

logger = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 5.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0


@dataclass
class CapturedFrame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    index: int  # position among the frames read from the camera
    time_s: float  # the frame's time in the camera's stream
    captured_at: float  # unix time it was decoded


class SourceFailed(Exception):
    """The stream cannot go on (the message is safe to show)."""


class SourceLost(Exception):
    """The camera went away; the message says how, safe to show."""


def describe_error(exc: BaseException) -> str:
    """What went wrong with a camera, in our words: never the exception's text (it may hold the URL or the
    remote's content)."""
    import av

    known: list[tuple[type[BaseException], str]] = [
        (av.error.HTTPUnauthorizedError, "the camera refused the credentials (401): check the user and password"),
        (av.error.HTTPForbiddenError, "the camera refused access (403)"),
        (av.error.HTTPNotFoundError, "the camera has no such path (404): check the URL's path"),
        (av.error.HTTPClientError, "the camera refused the request (4xx)"),
        (av.error.HTTPServerError, "the camera answered with a server error (5xx)"),
        (ConnectionRefusedError, "the connection was refused: is the camera on, and is the port right?"),
        (ConnectionResetError, "the camera closed the connection"),
        (TimeoutError, "the camera did not answer in time"),
        (av.error.ExitError, "the camera did not answer in time"),
        (av.error.InvalidDataError, "the camera's data is not a video this service can decode"),
        (av.error.EOFError, "the camera ended the stream"),
    ]
    for kind, message in known:
        if isinstance(exc, kind):
            return message
    return f"the camera could not be read ({type(exc).__name__})"


class Announce(Protocol):
    """Where a source announces a new frame: a queue, or the hub's doorbell."""

    def put(self, source: StreamSource) -> None: ...


class StreamSource:
    """Reads one camera in a daemon thread; `ready.put(source)` announces each new frame, which `take()` hands over."""

    def __init__(
        self,
        stream_id: str,
        url: str,
        fps: float,
        allow: AllowList,
        ready: Announce,
        on_status: Callable[[StreamStatus, str | None], None],
        *,
        connect_attempts: int = 3,
        retry_s: float = 300.0,
        max_pixels: int = 4096 * 2160,
    ) -> None:
        self.stream_id = stream_id
        self.period_s = 1.0 / fps
        self.frames_read = 0
        self.frames_dropped = 0
        self.reconnects = 0
        self.width: int | None = None
        self.height: int | None = None
        self._url = url
        self._allow = allow
        self._ready = ready
        self._on_status = on_status
        self._connect_attempts = connect_attempts
        self._retry_s = retry_s
        self._max_pixels = max_pixels
        self._slot: CapturedFrame | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next_due = 0.0
        self._thread = threading.Thread(target=self._run, name=f"stream-{stream_id[:8]}", daemon=True)

    def start(self) -> StreamSource:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop reading (returns at once; a read in progress ends within its timeout and reports nothing)."""
        self._stop.set()
        with self._lock:
            self._slot = None

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def peek(self) -> CapturedFrame | None:
        """The newest frame due, left in place (None when there is none)."""
        return self._slot

    def take(self) -> CapturedFrame | None:
        """The newest frame due, once (None when it was taken or the source stopped)."""
        with self._lock:
            frame, self._slot = self._slot, None
        return frame

    # reader thread
    def _run(self) -> None:
        ran = False
        failures = 0  # connections in a row that delivered no frame
        last_frame = time.monotonic()
        while not self._stop.is_set():
            read_before = self.frames_read
            try:
                self._read(check_url(self._url, self._allow))
                reason = "the camera ended the stream"
            except (StreamUrlError, SourceFailed) as exc:
                self._status(StreamStatus.FAILED, str(exc))
                return
            except SourceLost as exc:
                reason = str(exc)
            except Exception as exc:
                reason = describe_error(exc)
                logger.info("stream %s: %s (%s)", self.stream_id, reason, type(exc).__name__)
            if self._stop.is_set():
                return
            if self.frames_read > read_before:
                ran, failures, last_frame = True, 0, time.monotonic()
            failures += 1
            if not ran and failures >= self._connect_attempts:
                self._status(StreamStatus.FAILED, f"no frame after {failures} connection attempts: {reason}")
                return
            if ran and time.monotonic() - last_frame > self._retry_s:
                self._status(StreamStatus.FAILED, f"no frame for {self._retry_s:g} s: {reason}")
                return
            if ran:
                self.reconnects += 1
                self._status(StreamStatus.RECONNECTING, reason)
            else:
                self._status(StreamStatus.STARTING, reason)
            self._stop.wait(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (failures - 1)))

    def _read(self, checked) -> None:  # noqa: ANN001 (a jobs.stream_urls.CheckedUrl)
        import av

        with av.open(
            checked.url, options=checked.ffmpeg_options, timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S)
        ) as container:
            if not container.streams.video:
                raise SourceLost("the camera's stream has no video")
            video = container.streams.video[0]
            video.thread_type = "SLICE"  # frame threads would hold each frame back by as many frames: latency
            first = True
            started = time.monotonic()
            for frame in container.decode(video):
                if self._stop.is_set():
                    return
                if first:
                    self._check_size(frame.width, frame.height)
                    self._status(StreamStatus.RUNNING, None)
                    first = False
                self._offer(frame, started)

    def _check_size(self, width: int, height: int) -> None:
        if width * height > self._max_pixels:
            raise SourceFailed(
                f"the camera's frames are {width}x{height} = {width * height} pixels, above the limit of "
                f"{self._max_pixels} (MASENET_MAX_VIDEO_PIXELS): use the camera's lower-resolution stream"
            )
        self.width, self.height = width, height

    def _offer(self, frame, started: float) -> None:  # noqa: ANN001 (an av.VideoFrame)
        """Count the frame; if one is due, convert it and put it in the slot (replacing one not taken)."""
        index = self.frames_read
        self.frames_read += 1
        now = time.monotonic()
        if now < self._next_due:
            self.frames_dropped += 1
            return
        self._next_due = max(self._next_due + self.period_s, now - self.period_s)
        time_s = float(frame.time) if frame.time is not None else now - started
        captured = CapturedFrame(frame.to_ndarray(format="rgb24"), index, time_s, time.time())
        with self._lock:
            if self._stop.is_set():
                return
            replaced, self._slot = self._slot, captured
        if replaced is not None:
            self.frames_dropped += 1
        else:
            self._ready.put(self)

    def _status(self, status: StreamStatus, error: str | None) -> None:
        if self._stop.is_set():
            return
        try:
            self._on_status(status, error)
        except Exception:
            logger.exception("stream %s: cannot record status %s", self.stream_id, status.value)
