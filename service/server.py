"""How the API process serves: uvicorn's HTTP/1.1 protocol with read deadlines, and a drain on SIGTERM.

uvicorn times out only idle keep-alive connections after a response. A client could otherwise hold a
connection forever by never sending a request, by sending its headers a byte at a time, or by trickling its
body, the usual way to exhaust a server's connections. `GuardedH11Protocol` closes the connection when:

    idle      nothing arrives for `idle_s` while no request is in progress (a new or a kept-alive connection)
    headers   a request's headers are not complete `header_s` after its first byte
    body      after the first `body_grace_s` of a body, it arrives slower than `body_min_rate` bytes/s on average

A body closed this way reaches the app as a disconnect (499, like any client that leaves). Once a request is
fully read the deadlines stop: a long inference never closes the connection. The values are settings
(MASENET_IDLE_TIMEOUT_S, MASENET_HEADER_TIMEOUT_S, MASENET_BODY_GRACE_S, MASENET_BODY_MIN_RATE).

`DrainingServer` stops in two steps on SIGTERM: for MASENET_DRAIN_S it keeps serving but answers /readyz 503,
so load balancers and Kubernetes stop sending new requests; then uvicorn's graceful shutdown stops accepting
and lets the requests in flight finish for up to MASENET_SHUTDOWN_GRACE_S before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from types import FrameType
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from jobs.settings import Settings

logger = logging.getLogger(__name__)

TICK_S = 0.5


class GuardedH11Protocol(H11Protocol):
    """H11Protocol that enforces the read deadlines of the module docstring (class attributes, see `guarded`)."""

    idle_s = 30.0
    header_s = 10.0
    body_grace_s = 10.0
    body_min_rate = 1024.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle_since: float | None = self.loop.time()  # no request in progress and no answer pending since
        self._request_at: float | None = None  # first byte of the request being read
        self._body_at: float | None = None  # end of its headers
        self._body_bytes = 0
        self._body_elapsed = 0.0
        self._tick = self.loop.call_later(TICK_S, self._check)

    def connection_lost(self, exc: Exception | None) -> None:
        self._tick.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        now = self.loop.time()
        self._idle_since = None
        if self._request_at is None and self.conn.their_state is h11.IDLE:
            self._request_at = now
        elif self._body_at is not None:
            self._body_bytes += len(data)
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.SEND_BODY and self._body_at is None:
            self._body_at, self._body_bytes, self._body_elapsed = now, 0, 0.0
        elif state is not h11.SEND_BODY and state is not h11.IDLE:
            self._request_at = self._body_at = None  # read in full: no deadline while the app answers

    def _check(self) -> None:
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # closed, or handed over to another protocol
        now = self.loop.time()
        reason = self._overdue(now)
        if reason:
            logger.info("closing the connection from %s: %s", _peer(self.client), reason)
            self.transport.close()
            return
        self._tick = self.loop.call_later(TICK_S, self._check)

    def _overdue(self, now: float) -> str:
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self._body_at is None or self.flow.read_paused:
                # A body that started in a pipelined read, or one the app is not reading yet (uvicorn paused the
                # socket): the clock starts, or stands still, here. Only the client's own slowness counts.
                self._body_at = now - (0.0 if self._body_at is None else self._body_elapsed)
                return ""
            self._body_elapsed = elapsed = now - self._body_at
            if elapsed > self.body_grace_s and self._body_bytes < self.body_min_rate * elapsed:
                return f"its body came at {self._body_bytes / elapsed:.0f} B/s, under {self.body_min_rate:g} B/s"
            return ""
        if state is not h11.IDLE:
            return ""
        if self._request_at is not None:
            late = now - self._request_at > self.header_s
            return f"its request headers took longer than {self.header_s:g} s" if late else ""
        if self.cycle is not None and not self.cycle.response_complete:
            return ""  # the app is still answering
        if self._idle_since is None:
            self._idle_since = now
        return f"it sent nothing for {self.idle_s:g} s" if now - self._idle_since > self.idle_s else ""


def _peer(client: Any) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def guarded(settings: Settings) -> type[GuardedH11Protocol]:
    """The protocol class with the deadlines of `settings`."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {
            "idle_s": settings.idle_timeout_s,
            "header_s": settings.header_timeout_s,
            "body_grace_s": settings.body_grace_s,
            "body_min_rate": float(settings.body_min_rate),
        },
    )


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before the graceful shutdown (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, drain_s: float) -> None:
        super().__init__(config)
        self.drain_s = drain_s
        self.draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.draining or sig != signal.SIGTERM or self.drain_s <= 0:
            super().handle_exit(sig, frame)  # a second signal, or Ctrl-C: stop now (graceful shutdown still runs)
            return
        self.draining = True
        app = self.config.loaded_app
        while not hasattr(app, "state") and hasattr(app, "app"):
            app = app.app  # unwrap uvicorn's middlewares down to the FastAPI app
        if hasattr(app, "state"):
            app.state.draining = True
        logger.info("SIGTERM: answering /readyz 503 for %g s, then finishing the requests in flight", self.drain_s)
        timer = threading.Timer(self.drain_s, super().handle_exit, (sig, frame))
        timer.daemon = True
        timer.start()


def serve(settings: Settings, host: str, port: int, log_level: str, access_log: bool) -> None:
    """Run the API (`masenet serve`) with the read deadlines and the drain of `settings`."""
    config = uvicorn.Config(
        "service.app:create_app",
        factory=True,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        http=guarded(settings),
        ws="none",  # the API serves no WebSockets
        timeout_keep_alive=max(1, round(settings.idle_timeout_s)),
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
    )
    DrainingServer(config, settings.drain_s).run()
