"""Local fake cameras for the tests and benchmarks of live streams: synthetic infrared video served the way a real
camera serves it, so that a PyAV (FFmpeg) client reads it like one.

`CameraScene` draws the pictures: a smooth background, seeded sensor noise and small Gaussian blobs moving on known,
wrapping paths (the bundled model detects such blobs). A camera serves a scene live: the picture shown at a moment is
`index = int((now - start) * fps)`, so a late client sees the current frame, and each client gets frames at `fps`.

- `MjpegCamera`: HTTP `GET /video.mjpg`, `multipart/x-mixed-replace` JPEG parts. FFmpeg probes the format by
  itself (`av.open(camera.url)`); `format="mpjpeg"` skips the probe and works as well.
- `TsCamera`: HTTP `GET /video.ts`, a close-delimited MPEG-TS stream of H.264; `av.open(camera.url)` reads it.
- `RtspCamera` (in `tools.rtsp_camera`): RTSP with RTP interleaved over TCP.

Every camera is a context manager running in background threads, with `url`, `frames_sent`, `current_index()`,
`drop()` (close every client connection and stop listening: the camera vanishes), `resume()` (listen again on the
same port) and `close()`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO, TypeVar

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

H264_OPTIONS = {"preset": "ultrafast", "tune": "zerolatency", "crf": "18"}
JPEG_QUALITY = 90
BOUNDARY = "masenetframe"
MAX_HEADER_BYTES = 64 * 1024
ACCEPT_POLL_S = 0.1
JOIN_TIMEOUT_S = 1.0

CameraT = TypeVar("CameraT", bound="LiveCamera")


# -------------------------------------------------------------------------------------------- the scene


@dataclass(frozen=True)
class TargetPath:
    """A target starting at (x0, y0) pixels and moving by (vx, vy) pixels per frame; it wraps around the frame."""

    x0: float
    y0: float
    vx: float
    vy: float

    def centre(self, index: int, width: int, height: int) -> tuple[float, float]:
        """Centre (x, y) in pixels at frame `index`, wrapped into the frame with a modulo."""
        return (self.x0 + self.vx * index) % width, (self.y0 + self.vy * index) % height


DEFAULT_TARGETS = (TargetPath(30, 60, 3, 0.5), TargetPath(280, 200, -2.5, -1))


@dataclass(frozen=True)
class CameraScene:
    """Infrared-looking grey video: background `70 + 20 sin(3 x / W)`, sensor noise sigma 3 seeded by `seed + index`
    (deterministic), and a Gaussian blob (amplitude 110, sigma 1.6) at each target's centre."""

    width: int = 320
    height: int = 256
    targets: tuple[TargetPath, ...] = DEFAULT_TARGETS
    seed: int = 0
    background: float = 70.0
    background_swing: float = 20.0
    noise_sigma: float = 3.0
    target_amplitude: float = 110.0
    target_sigma: float = 1.6

    def centres(self, index: int) -> list[tuple[float, float]]:
        """Target centres (x, y) in pixels at frame `index`."""
        return [target.centre(index, self.width, self.height) for target in self.targets]

    def frame(self, index: int) -> np.ndarray:
        """Frame `index` as an (H, W, 3) uint8 RGB grey image."""
        columns = np.arange(self.width, dtype=np.float64)
        rows = np.arange(self.height, dtype=np.float64)
        background = self.background + self.background_swing * np.sin(columns / self.width * 3.0)  # (W,)
        rng = np.random.default_rng(self.seed + index)
        image = background[None, :] + rng.normal(0.0, self.noise_sigma, (self.height, self.width))  # (H, W)
        for centre_x, centre_y in self.centres(index):
            profile_x = np.exp(-((columns - centre_x) ** 2) / (2 * self.target_sigma**2))  # (W,)
            profile_y = np.exp(-((rows - centre_y) ** 2) / (2 * self.target_sigma**2))  # (H,)
            image += self.target_amplitude * np.outer(profile_y, profile_x)
        grey = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)


def jpeg_bytes(picture: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Encode an RGB picture as JPEG with Pillow."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# -------------------------------------------------------------------------------------------- requests


def read_headers(reader: BinaryIO) -> dict[str, str]:
    """Header lines up to the blank line, as a dict with lower-case names."""
    headers: dict[str, str] = {}
    size = 0
    while True:
        line = reader.readline(MAX_HEADER_BYTES)
        size += len(line)
        if not line:
            raise ConnectionError("connection closed inside a request head")
        if line in (b"\r\n", b"\n"):
            return headers
        if size > MAX_HEADER_BYTES:
            raise ConnectionError("request head too long")
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


def read_http_request(connection: socket.socket) -> tuple[str, str]:
    """Method and path of the HTTP request on a fresh connection (headers read and ignored)."""
    reader = connection.makefile("rb")
    request_line = reader.readline(MAX_HEADER_BYTES).decode("latin-1").split()
    read_headers(reader)
    if len(request_line) < 2:
        raise ConnectionError("malformed request line")
    return request_line[0], request_line[1].split("?")[0]


def send_http_error(connection: socket.socket, status: str) -> None:
    """Answer with an HTTP error status and an empty body."""
    connection.sendall(f"HTTP/1.0 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())


# -------------------------------------------------------------------------------------------- the base camera


class LiveCamera:
    """Serves `scene` live on `host:port` (the OS picks the port when 0; it is kept across drop/resume).

    A listening thread accepts connections and starts one thread per client, which runs `serve_client`; subclasses
    implement it, taking frame indices from `frame_indices()` and calling `count_frame()` for each frame sent.
    `frames_sent` counts the frames sent to all clients together.
    """

    scheme = "http"
    path = "/"

    def __init__(
        self, scene: CameraScene | None = None, fps: float = 10.0, port: int = 0, host: str = "127.0.0.1"
    ) -> None:
        self.scene = scene if scene is not None else CameraScene()
        self.fps = fps
        self.host = host
        self.port = port
        self.frames_sent = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._started_at = time.monotonic()

    # -- lifecycle

    def start(self: CameraT) -> CameraT:
        """Start listening; the clock of the live picture starts now."""
        self._started_at = time.monotonic()
        self._listen()
        return self

    def __enter__(self: CameraT) -> CameraT:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        """Where a client opens the camera."""
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"

    def current_index(self) -> int:
        """Index of the frame the camera shows now."""
        return int((time.monotonic() - self._started_at) * self.fps)

    def drop(self) -> None:
        """Close every client connection and the listening socket: clients see the camera vanish."""
        with self._lock:
            listener, self._listener = self._listener, None
            connections = list(self._connections)
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # leaves LISTEN at once, even while accept() polls it
            listener.close()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        logger.debug("camera %s dropped %d connections", self.url, len(connections))

    def resume(self) -> None:
        """Listen again on the same port after `drop()`."""
        if self._listener is None and not self._closed.is_set():
            self._listen()

    def close(self) -> None:
        """Stop everything and join the threads (within about a second)."""
        self._closed.set()
        self.drop()
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.0))

    # -- for subclasses

    def serve_client(self, connection: socket.socket) -> None:
        """Talk to one client until it goes away or the camera closes."""
        raise NotImplementedError

    def frame_indices(self) -> Iterator[int]:
        """The live frame index, yielded at `fps` until the camera closes (a late frame is skipped, not caught up)."""
        period = 1.0 / self.fps
        next_at = time.monotonic()
        while not self._closed.is_set():
            yield self.current_index()
            next_at += period
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at = time.monotonic()
            self._closed.wait(max(delay, 0.0))

    def count_frame(self) -> None:
        """Count one frame sent to a client."""
        with self._lock:
            self.frames_sent += 1

    # -- sockets and threads

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(16)
        listener.settimeout(ACCEPT_POLL_S)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        self._start_thread(self._accept_loop, listener)
        logger.debug("camera listening at %s", self.url)

    def _start_thread(self, target: Callable[..., None], *arguments: Any) -> None:
        thread = threading.Thread(target=target, args=arguments, daemon=True, name=f"camera-{self.port}")
        with self._lock:
            self._threads = [known for known in self._threads if known.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(None)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                dropped = self._listener is not listener
                if not dropped:
                    self._connections.add(connection)
            if dropped:  # accepted while drop() ran
                connection.close()
                return
            self._start_thread(self._handle, connection)

    def _handle(self, connection: socket.socket) -> None:
        try:
            self.serve_client(connection)
        except OSError as error:
            logger.debug("camera client went away: %s", error)
        finally:
            with self._lock:
                self._connections.discard(connection)
            connection.close()


# -------------------------------------------------------------------------------------------- MJPEG over HTTP


class MjpegCamera(LiveCamera):
    """HTTP camera: `GET /video.mjpg` streams `multipart/x-mixed-replace` JPEG parts (quality 90), each with
    Content-Type and Content-Length; any other path is 404.

    `av.open(camera.url)` reads it (FFmpeg finds its `mpjpeg` demuxer by probing).
    """

    path = "/video.mjpg"

    def serve_client(self, connection: socket.socket) -> None:
        method, path = read_http_request(connection)
        if method != "GET" or path != self.path:
            send_http_error(connection, "404 Not Found")
            return
        connection.sendall(
            (
                "HTTP/1.0 200 OK\r\n"
                f"Content-Type: multipart/x-mixed-replace; boundary={BOUNDARY}\r\n"
                "Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
            ).encode()
        )
        for index in self.frame_indices():
            jpeg = jpeg_bytes(self.scene.frame(index))
            part_head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
            connection.sendall(part_head.encode() + jpeg + b"\r\n")
            self.count_frame()


# -------------------------------------------------------------------------------------------- MPEG-TS over HTTP


class _SocketSink(io.RawIOBase):
    """A write-only file over a socket, for the MPEG-TS muxer."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.connection.sendall(data)
        return len(data)


class TsCamera(LiveCamera):
    """HTTP camera: `GET /video.ts` streams MPEG-TS with H.264 (libx264, ultrafast, zerolatency, crf 18, a keyframe
    every `fps` frames) until the connection closes; any other path is 404. Read it with `av.open(camera.url)`."""

    path = "/video.ts"

    def serve_client(self, connection: socket.socket) -> None:
        import av

        method, path = read_http_request(connection)
        if method != "GET" or path != self.path:
            send_http_error(connection, "404 Not Found")
            return
        connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: video/mp2t\r\nConnection: close\r\n\r\n")
        try:
            self._stream(connection)
        except av.FFmpegError as error:  # the muxer wraps the socket's errors
            logger.debug("ts client went away: %s", error)

    def _stream(self, connection: socket.socket) -> None:
        import av

        rate = max(round(self.fps), 1)
        with av.open(_SocketSink(connection), mode="w", format="mpegts", options={"flush_packets": "1"}) as output:
            stream = output.add_stream("libx264", rate=rate, options=H264_OPTIONS)
            stream.width, stream.height, stream.pix_fmt = self.scene.width, self.scene.height, "yuv420p"
            stream.codec_context.gop_size = rate
            for count, index in enumerate(self.frame_indices()):
                frame = av.VideoFrame.from_ndarray(self.scene.frame(index), format="rgb24")
                frame.pts = count
                output.mux(stream.encode(frame))
                self.count_frame()
