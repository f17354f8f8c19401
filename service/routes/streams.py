"""Live camera streams: POST /streams, GET /streams, GET /streams/{id}, its events and snapshot, DELETE.

The API checks the URL (scheme, resolved addresses against MASENET_STREAM_ALLOW) and writes the stream's record;
a worker claims it, reads the camera and publishes one event per processed frame into a capped Redis stream,
which `GET /streams/{id}/events` relays as server-sent events (`id:` is the Redis entry id, so a client that
reconnects with `Last-Event-ID` resumes where it left off, as far as the kept events reach back).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import redis
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from jobs.settings import Settings
from jobs.stream_store import StreamRecord, StreamStore
from jobs.stream_urls import AllowList, StreamUrlError, check_url
from jobs.streams import (
    EventType,
    InvalidStreamIdError,
    StatusEvent,
    StreamAccepted,
    StreamList,
    StreamRequest,
    StreamState,
    StreamStatus,
    new_stream_id,
)
from service.deps import AuthDep, BrokerDep, QuotaDep, SettingsDep
from service.errors import InvalidParameters, JobNotReady, StreamNotFound, TooManyStreams
from service.queueing import unavailable
from service.routes.detect import resolve_size
from service.schemas import ERROR_RESPONSES, ErrorResponse

router = APIRouter(tags=["live streams"])

EVENT_ID_PATTERN = re.compile(r"\d{1,20}-\d{1,20}")
READ_BLOCK_MS = 1000
KEEPALIVE_S = 15.0
NOT_FOUND = {404: {"model": ErrorResponse, "description": "unknown, expired or malformed stream id"}}


def stream_store(connection: Any, settings: Settings) -> StreamStore:
    return StreamStore(connection, settings.queue_prefix, settings.stream_ttl_s, settings.stream_events_max)


def load_record(store: StreamStore, settings: Settings, stream_id: str) -> StreamRecord:
    try:
        record = store.read(stream_id)
    except InvalidStreamIdError as exc:
        raise StreamNotFound(
            f"no stream {stream_id[:64]!r}: stream ids are the 32-character ids POST /streams returns"
        ) from exc
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from exc
    if record is None:
        raise StreamNotFound(
            f"no stream {stream_id!r}: it never existed, or it ended more than MASENET_STREAM_TTL_S ago"
        )
    return record


def create(store: StreamStore, settings: Settings, request: StreamRequest) -> str:
    """Check the URL and the stream limit, then write the record (runs in a thread: DNS and Redis block)."""
    try:
        check_url(request.url, AllowList.parse(settings.stream_allow))
    except StreamUrlError as exc:
        raise InvalidParameters(f"url: {exc}") from exc
    try:
        if store.live_count() >= settings.max_streams:
            raise TooManyStreams(
                f"{settings.max_streams} live streams already run (MASENET_MAX_STREAMS): stop one with "
                "DELETE /streams/{id} first"
            )
        stream_id = new_stream_id()
        store.create(stream_id, request)
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from exc
    return stream_id


@router.post(
    "/streams",
    status_code=201,
    response_model=StreamAccepted,
    responses=ERROR_RESPONSES,
    summary="Watch a camera (RTSP, HTTP MJPEG or MPEG-TS): detect and track on its frames continuously",
)
async def start_stream(
    body: StreamRequest, response: Response, settings: SettingsDep, broker: BrokerDep, _quota: QuotaDep
) -> StreamAccepted:
    body = resolve_size(settings, body)
    stream_id = await run_in_threadpool(create, stream_store(broker.sync_redis, settings), settings, body)
    status_url = f"/streams/{stream_id}"
    response.headers["Location"] = status_url
    return StreamAccepted(stream_id=stream_id, status_url=status_url, events_url=f"{status_url}/events")


@router.get("/streams", response_model=StreamList, responses=ERROR_RESPONSES, summary="Every stream, with its status")
async def list_streams(settings: SettingsDep, broker: BrokerDep, _auth: AuthDep) -> StreamList:
    try:
        records = await run_in_threadpool(stream_store(broker.sync_redis, settings).records)
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from exc
    return StreamList(streams=[record.public() for record in records])


@router.get(
    "/streams/{stream_id}",
    response_model=StreamState,
    responses={**ERROR_RESPONSES, **NOT_FOUND},
    summary="A stream's status, frame counters, rates and capture-to-event latency",
)
async def get_stream(stream_id: str, settings: SettingsDep, broker: BrokerDep, _auth: AuthDep) -> StreamState:
    record = await run_in_threadpool(load_record, stream_store(broker.sync_redis, settings), settings, stream_id)
    return record.public()


@router.delete(
    "/streams/{stream_id}",
    response_model=StreamState,
    responses={**ERROR_RESPONSES, **NOT_FOUND},
    summary="Stop a stream (its worker lets go of the camera within a second)",
)
async def stop_stream(stream_id: str, settings: SettingsDep, broker: BrokerDep, _auth: AuthDep) -> StreamState:
    store = stream_store(broker.sync_redis, settings)
    await run_in_threadpool(load_record, store, settings, stream_id)
    try:
        if await run_in_threadpool(store.stop, stream_id):
            event = StatusEvent(status=StreamStatus.STOPPED)
            await run_in_threadpool(store.publish, stream_id, [(EventType.STATUS, event.model_dump_json())], True)
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from exc
    return (await run_in_threadpool(load_record, store, settings, stream_id)).public()


@router.get(
    "/streams/{stream_id}/snapshot",
    response_class=Response,
    responses={
        **ERROR_RESPONSES,
        **NOT_FOUND,
        409: {"model": ErrorResponse, "description": "no frame processed yet"},
        200: {"content": {"image/jpeg": {}}, "description": "the latest processed frame with boxes and track ids"},
    },
    summary="The latest processed frame as JPEG, with boxes and track ids drawn",
)
async def get_snapshot(stream_id: str, settings: SettingsDep, broker: BrokerDep, _auth: AuthDep) -> Response:
    store = stream_store(broker.sync_redis, settings)
    record = await run_in_threadpool(load_record, store, settings, stream_id)
    try:
        jpeg = await run_in_threadpool(store.snapshot, stream_id)
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from exc
    if jpeg is None:
        raise JobNotReady(f"stream {stream_id} has no processed frame yet (it is {record.status.value}); try again")
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


@router.get(
    "/streams/{stream_id}/events",
    response_class=StreamingResponse,
    responses={
        **ERROR_RESPONSES,
        **NOT_FOUND,
        200: {"content": {"text/event-stream": {}}, "description": "server-sent events: frame, track_*, status"},
    },
    summary="Server-sent events: one `frame` event per processed frame, `track_started`, `track_ended`, `status`",
)
async def stream_events(
    stream_id: str, request: Request, settings: SettingsDep, broker: BrokerDep, _auth: AuthDep
) -> StreamingResponse:
    store = stream_store(broker.sync_redis, settings)
    await run_in_threadpool(load_record, store, settings, stream_id)
    resume = request.headers.get("last-event-id", "").strip()
    if resume and EVENT_ID_PATTERN.fullmatch(resume) is None:
        raise InvalidParameters("Last-Event-ID must be an event id this stream sent (like 1733400000000-0)")
    try:
        start = resume or await latest_event_id(broker.async_redis, store.events_key(stream_id))
    except redis.RedisError as exc:
        raise unavailable(settings, exc) from exc
    events = relay_events(request, broker.async_redis, store, stream_id, start)
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def latest_event_id(connection: Any, key: str) -> str:
    """The id of the newest event kept ("0-0" when none): a new reader gets the events after it."""
    newest = await connection.xrevrange(key, count=1)
    if not newest:
        return "0-0"
    entry_id = newest[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def relay_events(
    request: Request, connection: Any, store: StreamStore, stream_id: str, start: str
) -> AsyncIterator[str]:
    """Events after `start` as SSE, until the client leaves or the stream has ended and every event was sent."""
    key, record_key, last = store.events_key(stream_id), store.key(stream_id), start
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    yield "retry: 2000\n\n"
    while not await request.is_disconnected():
        try:
            answer = await connection.xread({key: last}, count=100, block=READ_BLOCK_MS)
        except redis.RedisError:
            yield ": the service lost Redis for a moment\n\n"
            await asyncio.sleep(1.0)
            continue
        entries = answer[0][1] if answer else []
        for entry_id, fields in entries:
            last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            kind = _text(fields.get(b"type", fields.get("type", b"frame")))
            data = _text(fields.get(b"data", fields.get("data", b"{}")))
            yield f"id: {last}\nevent: {kind}\ndata: {data}\n\n"
        if entries:
            quiet_since = loop.time()
            continue
        status = _text(await connection.hget(record_key, "status"))
        if status is None or StreamStatus(status).final:
            return
        if loop.time() - quiet_since > KEEPALIVE_S:
            quiet_since = loop.time()
            yield ": keep-alive\n\n"


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
