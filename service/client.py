"""A Python client for the MASENet detection service: httpx only (no torch; numpy only if you pass arrays).

    from service.client import Client

    with Client("http://localhost:8000", api_key=None) as client:
        answer = client.detect(["frame.png"], conf=0.3, gradcam=True)      # DetectResponse
        job = client.submit_video("clip.mp4", annotate=True)                 # JobAccepted
        client.wait(job.job_id, progress=lambda state: print(state.progress))
        frames = client.result(job.job_id).frames                            # VideoJobResult
        client.annotated_video(job.job_id, "clip.annotated.mp4")
        stream = client.start_stream("rtsp://192.168.1.20/stream1", fps=5)   # StreamAccepted
        for event in client.events(stream.stream_id):                        # StreamEvent, as they come
            ...

Results are the API's own pydantic models. A refusal raises `ApiError` carrying the status and the API's
`detail`; a 503 or 429 with `Retry-After` is retried (`retries` times) after the time the service asks for.
`AsyncClient` is the same for asyncio code (the benchmarks use it).
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from jobs.streams import (
    EventType,
    FrameEvent,
    StatusEvent,
    StreamAccepted,
    StreamList,
    StreamState,
    TrackEvent,
)
from jobs.video import JobAccepted, JobState, VideoJobResult, VideoStatus
from service.schemas import DetectResponse, ModelsResponse, ReadyResponse, StatusResponse

Model = TypeVar("Model", bound=BaseModel)
ImageInput = str | Path | bytes | tuple[str, bytes] | Any  # a path, raw bytes, (filename, bytes) or an array
RETRY_STATUSES = (429, 503)
MAX_RETRY_WAIT_S = 30.0
EVENT_PAYLOADS: dict[str, type[BaseModel]] = {
    EventType.FRAME.value: FrameEvent,
    EventType.TRACK_STARTED.value: TrackEvent,
    EventType.TRACK_ENDED.value: TrackEvent,
    EventType.STATUS.value: StatusEvent,
}


class ApiError(Exception):
    """The service refused or failed a request; `detail` is its explanation of what to change."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class JobFailed(Exception):
    """A video job ended failed or canceled; `state` is its last status."""

    def __init__(self, state: JobState) -> None:
        super().__init__(f"job {state.job_id} {state.status.value}: {state.error or 'no reason given'}")
        self.state = state


@dataclass(frozen=True)
class StreamEvent:
    """One server-sent event of a live stream: its id (for resuming), type and typed data."""

    id: str
    type: str
    data: FrameEvent | TrackEvent | StatusEvent | dict[str, Any]


# ----------------------------------------------------------------------------------- request building


def image_part(image: ImageInput, position: int) -> tuple[str, tuple[str, bytes, str]]:
    """One multipart part named `image` from a path, bytes, (filename, bytes) or an (H, W[, C]) uint8/uint16 array."""
    if isinstance(image, str | Path):
        path = Path(image)
        return "image", (path.name, path.read_bytes(), "application/octet-stream")
    if isinstance(image, bytes):
        return "image", (f"image-{position}", image, "application/octet-stream")
    if isinstance(image, tuple) and len(image) == 2:
        return "image", (str(image[0]), bytes(image[1]), "application/octet-stream")
    if hasattr(image, "__array_interface__"):
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return "image", (f"image-{position}.png", buffer.getvalue(), "image/png")
    raise TypeError(f"image {position}: give a path, bytes, (filename, bytes) or an array, not {type(image).__name__}")


def query(**params: Any) -> dict[str, Any]:
    """Query parameters without the unset ones; booleans as the API spells them."""
    kept = {key: value for key, value in params.items() if value is not None}
    return {key: str(value).lower() if isinstance(value, bool) else value for key, value in kept.items()}


def raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text or response.reason_phrase
    raise ApiError(response.status_code, str(detail))


def parsed(response: httpx.Response, model: type[Model]) -> Model:
    raise_for_error(response)
    return model.model_validate_json(response.content)


def retry_after(response: httpx.Response, attempt: int, retries: int) -> float | None:
    """Seconds to wait before retrying, or None when the answer is final."""
    if response.status_code not in RETRY_STATUSES or attempt >= retries:
        return None
    header = response.headers.get("retry-after")
    if header is None:
        return None
    try:
        return min(MAX_RETRY_WAIT_S, max(0.0, float(header)))
    except ValueError:
        return 1.0


def stream_body(**params: Any) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}


class EventParser:
    """Server-sent events from the lines of a `text/event-stream`, one line at a time (comments, `retry:` skipped)."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.data: list[str] = []

    def feed(self, line: str) -> StreamEvent | None:
        """The event a blank line completes, else None."""
        if not line:
            event = None
            if self.data:
                kind = self.fields.get("event", "message")
                payload = json.loads("\n".join(self.data))
                model = EVENT_PAYLOADS.get(kind)
                event = StreamEvent(
                    self.fields.get("id", ""), kind, model.model_validate(payload) if model else payload
                )
            self.fields, self.data = {}, []
            return event
        if not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                self.data.append(value)
            elif name in ("id", "event"):
                self.fields[name] = value
        return None


def parse_events(lines: Iterable[str]) -> Iterator[StreamEvent]:
    parser = EventParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


def as_batch(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    single = isinstance(images, str | Path | bytes | tuple) or hasattr(images, "__array_interface__")
    return [images] if single else list(images)


# -------------------------------------------------------------------------------------------- clients


class Client:
    """Synchronous client; `Client(url, api_key=None, timeout=60.0, retries=3)`."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 60.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retries = retries
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        """One request, retried on 503/429 with Retry-After; raises ApiError for any other refusal."""
        attempt = 0
        while True:
            response = self.http.request(method, path, **options)
            wait = retry_after(response, attempt, self.retries)
            if wait is None:
                raise_for_error(response)
                return response
            attempt += 1
            time.sleep(wait)

    # images
    def detect(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        pixel_scale: float | None = None,
        imgsz: int | None = None,
        tta: str | None = None,
        gradcam: bool = False,
        preview: bool = False,
    ) -> DetectResponse:
        """Boxes for one or more frames (one result per frame, in order)."""
        batch = as_batch(images)
        params = query(conf=conf, iou=iou, max_det=max_det, pixel_scale=pixel_scale, imgsz=imgsz, tta=tta)
        params |= query(gradcam=gradcam, preview=preview)
        files = [image_part(image, position) for position, image in enumerate(batch)]
        return parsed(self.request("POST", "/detect", params=params, files=files), DetectResponse)

    def models(self) -> ModelsResponse:
        return parsed(self.request("GET", "/models"), ModelsResponse)

    def status(self) -> StatusResponse:
        """Workers, queue depths and live streams by status."""
        return parsed(self.request("GET", "/status"), StatusResponse)

    def ready(self) -> ReadyResponse:
        """Readiness (raises ApiError 503 with the reason when the service is not ready)."""
        return parsed(self.request("GET", "/readyz"), ReadyResponse)

    # video jobs
    def submit_video(self, path: str | Path, **params: Any) -> JobAccepted:
        """Upload a video (`conf`, `iou`, `pixel_scale`, `imgsz`, `tta`, `frame_stride`, `track`, `annotate`)."""
        path = Path(path)
        attempt = 0
        while True:  # the body is a file: reopened for every attempt
            with path.open("rb") as video:
                files = {"video": (path.name, video, "application/octet-stream")}
                response = self.http.post("/jobs", params=query(**params), files=files)
            wait = retry_after(response, attempt, self.retries)
            if wait is None:
                return parsed(response, JobAccepted)
            attempt += 1
            time.sleep(wait)

    def job(self, job_id: str) -> JobState:
        return parsed(self.request("GET", f"/jobs/{job_id}"), JobState)

    def wait(
        self,
        job_id: str,
        progress: Callable[[JobState], None] | None = None,
        poll_s: float = 0.5,
        timeout_s: float | None = None,
    ) -> JobState:
        """Poll until the job finishes (returns its state) or fails or is canceled (raises JobFailed)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            state = self.job(job_id)
            if progress is not None:
                progress(state)
            if state.status == VideoStatus.FINISHED:
                return state
            if state.status.final:
                raise JobFailed(state)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {state.status.value} after {timeout_s:g} s")
            time.sleep(poll_s)

    def result(self, job_id: str) -> VideoJobResult:
        return parsed(self.request("GET", f"/jobs/{job_id}/result"), VideoJobResult)

    def annotated_video(self, job_id: str, path: str | Path) -> Path:
        """Download the annotated MP4 (jobs submitted with annotate=True) to `path`."""
        path = Path(path)
        with self.http.stream("GET", f"/jobs/{job_id}/video") as response:
            if not response.is_success:
                response.read()
                raise_for_error(response)
            with path.open("wb") as output:
                for chunk in response.iter_bytes():
                    output.write(chunk)
        return path

    def cancel(self, job_id: str) -> JobState:
        return parsed(self.request("DELETE", f"/jobs/{job_id}"), JobState)

    # live streams
    def start_stream(self, url: str, **params: Any) -> StreamAccepted:
        """Watch a camera (`fps`, `conf`, `iou`, `pixel_scale`, `imgsz`, `tta`, `track`)."""
        return parsed(self.request("POST", "/streams", json=stream_body(url=url, **params)), StreamAccepted)

    def stream(self, stream_id: str) -> StreamState:
        return parsed(self.request("GET", f"/streams/{stream_id}"), StreamState)

    def streams(self) -> list[StreamState]:
        return parsed(self.request("GET", "/streams"), StreamList).streams

    def snapshot(self, stream_id: str) -> bytes:
        """The latest processed frame as JPEG, with boxes and track ids drawn."""
        return self.request("GET", f"/streams/{stream_id}/snapshot").content

    def stop_stream(self, stream_id: str) -> StreamState:
        return parsed(self.request("DELETE", f"/streams/{stream_id}"), StreamState)

    def events(self, stream_id: str, last_event_id: str | None = None, reconnect: bool = True) -> Iterator[StreamEvent]:
        """The stream's events as they come, until it ends; a dropped connection resumes from the last event."""
        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
            try:
                with self.http.stream(
                    "GET", f"/streams/{stream_id}/events", headers=headers, timeout=httpx.Timeout(30.0, read=None)
                ) as response:
                    if not response.is_success:
                        response.read()
                        raise_for_error(response)
                    for event in parse_events(response.iter_lines()):
                        last_event_id = event.id or last_event_id
                        yield event
                return  # the service ended the stream of events: the stream has ended
            except (httpx.TransportError, httpx.RemoteProtocolError):
                if not reconnect:
                    raise
                time.sleep(1.0)


class AsyncClient:
    """The asyncio twin of `Client`: detection, video jobs and streams (`events` does not reconnect by itself)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 60.0,
        retries: int = 3,
        limits: httpx.Limits | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retries = retries
        self.http = httpx.AsyncClient(
            base_url=url.rstrip("/"),
            headers=headers,
            timeout=timeout,
            limits=limits or httpx.Limits(),
            transport=transport,
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        attempt = 0
        while True:
            response = await self.http.request(method, path, **options)
            wait = retry_after(response, attempt, self.retries)
            if wait is None:
                raise_for_error(response)
                return response
            attempt += 1
            await asyncio.sleep(wait)

    async def detect(self, images: ImageInput | Sequence[ImageInput], **params: Any) -> DetectResponse:
        batch = as_batch(images)
        files = [image_part(image, position) for position, image in enumerate(batch)]
        return parsed(await self.request("POST", "/detect", params=query(**params), files=files), DetectResponse)

    async def submit_video(self, video: str | Path | tuple[str, bytes], **params: Any) -> JobAccepted:
        """Upload a video from a path (read in a thread) or as (filename, bytes)."""
        if isinstance(video, tuple):
            name, data = video
        else:
            name, data = Path(video).name, await asyncio.to_thread(Path(video).read_bytes)
        files = {"video": (name, data, "application/octet-stream")}
        return parsed(await self.request("POST", "/jobs", params=query(**params), files=files), JobAccepted)

    async def ready(self) -> ReadyResponse:
        return parsed(await self.request("GET", "/readyz"), ReadyResponse)

    async def job(self, job_id: str) -> JobState:
        return parsed(await self.request("GET", f"/jobs/{job_id}"), JobState)

    async def wait(
        self,
        job_id: str,
        progress: Callable[[JobState], None] | None = None,
        poll_s: float = 0.5,
        timeout_s: float | None = None,
    ) -> JobState:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            state = await self.job(job_id)
            if progress is not None:
                progress(state)
            if state.status == VideoStatus.FINISHED:
                return state
            if state.status.final:
                raise JobFailed(state)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {state.status.value} after {timeout_s:g} s")
            await asyncio.sleep(poll_s)

    async def result(self, job_id: str) -> VideoJobResult:
        return parsed(await self.request("GET", f"/jobs/{job_id}/result"), VideoJobResult)

    async def cancel(self, job_id: str) -> JobState:
        return parsed(await self.request("DELETE", f"/jobs/{job_id}"), JobState)

    async def start_stream(self, url: str, **params: Any) -> StreamAccepted:
        return parsed(await self.request("POST", "/streams", json=stream_body(url=url, **params)), StreamAccepted)

    async def stream(self, stream_id: str) -> StreamState:
        return parsed(await self.request("GET", f"/streams/{stream_id}"), StreamState)

    async def stop_stream(self, stream_id: str) -> StreamState:
        return parsed(await self.request("DELETE", f"/streams/{stream_id}"), StreamState)

    async def events(self, stream_id: str, last_event_id: str | None = None) -> AsyncIterator[StreamEvent]:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        timeout = httpx.Timeout(30.0, read=None)
        async with self.http.stream(
            "GET", f"/streams/{stream_id}/events", headers=headers, timeout=timeout
        ) as response:
            if not response.is_success:
                await response.aread()
                raise_for_error(response)
            parser = EventParser()
            async for line in response.aiter_lines():
                event = parser.feed(line)
                if event is not None:
                    yield event
