"""A camera reader on its own: frame-rate cap with newest-wins, HTTP MPEG-TS, refusals, errors in our words."""

from __future__ import annotations

import queue
import threading
import time

import av
import pytest

from jobs.stream_urls import AllowList
from jobs.streams import StreamStatus
from tools.cameras import CameraScene, MjpegCamera, TsCamera
from worker.stream_source import StreamSource, describe_error

LOCAL = AllowList.parse("127.0.0.1")


class Statuses:
    """The status callback of a source: what it reported, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[StreamStatus, str | None]] = []
        self.changed = threading.Event()

    def __call__(self, status: StreamStatus, error: str | None) -> None:
        self.seen.append((status, error))
        self.changed.set()

    def wait_for(self, status: StreamStatus, timeout_s: float = 20.0) -> str | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for seen, error in self.seen:
                if seen == status:
                    return error
            self.changed.wait(0.1)
            self.changed.clear()
        raise AssertionError(f"never {status.value}: {self.seen}")


def source_for(url: str, fps: float, statuses: Statuses, allow: AllowList = LOCAL, **options: object) -> StreamSource:
    return StreamSource("a" * 32, url, fps, allow, queue.Queue(), statuses, **options)  # type: ignore[arg-type]


def test_the_frame_rate_is_capped_and_the_newest_frame_wins() -> None:
    statuses = Statuses()
    with MjpegCamera(CameraScene(), fps=20) as camera:
        source = source_for(camera.url, fps=4, statuses=statuses).start()
        try:
            statuses.wait_for(StreamStatus.RUNNING)
            taken = []
            started = time.monotonic()
            while time.monotonic() - started < 3.0:
                time.sleep(0.5)  # a slow consumer: the cap offers 2 frames per take, one is replaced
                frame = source.take()
                if frame is not None:
                    taken.append((frame, source.frames_read))
        finally:
            source.stop()
    assert len(taken) >= 5
    for frame, read_then in taken:
        assert read_then - frame.index <= 6, "a taken frame was not among the newest"  # 20 fps: 0.3 s
        assert frame.image.shape == (256, 320, 3)
    assert source.frames_read >= 40
    assert source.frames_dropped >= source.frames_read - len(taken) - 2
    times = [frame.time_s for frame, _ in taken]
    assert times == sorted(times)


def test_http_mpeg_ts_cameras_are_read() -> None:
    statuses = Statuses()
    ready: queue.Queue[StreamSource] = queue.Queue()
    with TsCamera(CameraScene(), fps=10) as camera:
        source = StreamSource("b" * 32, camera.url, 5.0, LOCAL, ready, statuses).start()
        try:
            assert ready.get(timeout=20) is source
            frame = source.take()
        finally:
            source.stop()
    assert frame is not None and frame.image.shape == (256, 320, 3)
    assert (source.width, source.height) == (320, 256)


def test_a_host_outside_the_allow_list_fails_without_connecting() -> None:
    statuses = Statuses()
    with MjpegCamera(CameraScene(), fps=10) as camera:
        source = source_for(camera.url, 5.0, statuses, allow=AllowList.parse("10.0.0.0/8")).start()
        error = statuses.wait_for(StreamStatus.FAILED, timeout_s=5)
        assert camera.frames_sent == 0
    assert "MASENET_STREAM_ALLOW" in error and source.frames_read == 0


def test_frames_over_the_pixel_limit_fail_the_stream() -> None:
    statuses = Statuses()
    with MjpegCamera(CameraScene(), fps=10) as camera:
        source = source_for(camera.url, 5.0, statuses, max_pixels=320 * 200).start()
        error = statuses.wait_for(StreamStatus.FAILED)
        source.stop()
    assert "320x256" in error and "MASENET_MAX_VIDEO_PIXELS" in error


def test_a_camera_that_never_answers_fails_after_its_attempts() -> None:
    with MjpegCamera(CameraScene(), fps=10) as camera:
        url = camera.url  # closed when the block ends: nothing listens there any more
    statuses = Statuses()
    started = time.monotonic()
    source_for(url, 5.0, statuses, connect_attempts=3).start()
    error = statuses.wait_for(StreamStatus.FAILED)
    assert error.startswith("no frame after 3 connection attempts") and "refused" in error
    assert [status for status, _ in statuses.seen] == [StreamStatus.STARTING] * 2 + [StreamStatus.FAILED]
    assert time.monotonic() - started < 10.0


@pytest.mark.parametrize(
    "error",
    [
        av.error.HTTPUnauthorizedError(401, "Server returned 401 Unauthorized", "rtsp://admin:s3cret@10.0.0.1/x"),
        av.error.ConnectionRefusedError(111, "Connection refused", "rtsp://admin:s3cret@10.0.0.1/x"),
        av.error.InvalidDataError(1, "<html>secret page</html>", "http://admin:s3cret@10.0.0.1/x"),
        RuntimeError("rtsp://admin:s3cret@10.0.0.1/x said <html>secret page</html>"),
    ],
)
def test_errors_are_described_in_our_words(error: BaseException) -> None:
    message = describe_error(error)
    assert message and "s3cret" not in message and "admin" not in message and "secret page" not in message
