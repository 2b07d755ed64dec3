"""Connections a client cannot hold on to: uvicorn's h11 protocol with deadlines for a request's headers, its
body and the reading of its answer, and a ceiling on open connections that makes room by closing the one
that has waited longest for a request.

uvicorn has neither deadline: a client that connects and sends its headers a byte at a time, or never
finishes its body, keeps its connection as long as it likes; and its `limit_concurrency` counts such
connections with the working ones and then answers everybody, /health included, with a plain-text 503. Here
a connection waiting for a request costs a timer and a place in a queue, and is the first to go.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ltrec.deploy.serve.guard import Overloaded, error_body

STATE = "ltrec.connections"  # key of a worker's Connections in the lifespan state uvicorn gives each protocol
BODY_GRACE = 1.0  # seconds past the body deadline before the connection is cut: the routes answer 408 first


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 10.0  # from connecting, or from the end of the previous answer
    body_timeout: float = 10.0  # from the end of the headers; also for each stall in reading the answer
    max_connections: int = 4096


class Connections:
    """One worker's open connections; those waiting for a request, oldest first (dicts keep their order):
    with nothing sent, part of a request, or only the unread rest of a body after the answer; and counts for
    /metrics."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.open = 0
        self.busy = 0  # requests in progress, /health and /metrics aside
        self.waiting: dict[GuardedH11Protocol, None] = {}
        self.closed: Counter[str] = Counter()  # reason → connections the server closed
        self.refused = 0  # requests answered 503: too many in progress, or every open connection had one


def raw_response(status: int, reason: str, message: str) -> bytes:
    """An answer written past h11, for a request whose headers never arrived (h11 answers only requests)."""
    body = error_body(message)
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode() + body


class GuardedH11Protocol(H11Protocol):
    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        self.pool: Connections = app_state[STATE]
        self.counted = False
        self.reading: asyncio.TimerHandle | None = None  # the header or body deadline
        self.phase = ""  # what `reading` times: "header" or "body"
        self.writing: asyncio.TimerHandle | None = None  # armed while the client does not read its answer

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        pool = self.pool
        pool.open += 1
        self.counted = True
        self._watch()
        while pool.open > pool.limits.max_connections:  # each turn closes one, or gives up
            oldest = next((p for p in pool.waiting if p is not self), None)
            if oldest is None:  # every other connection has a request in progress: this one is told to come back
                self.app = Overloaded(self.app, pool)
                break
            oldest._expire("evicted")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc) -> None:
        self._release()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.writing is None:
            self.writing = self.loop.call_later(self.pool.limits.body_timeout, self._expire, "send_timeout")

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.writing is not None:
            self.writing.cancel()
            self.writing = None

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not HTTP (or headers over h11's 16 KB), as JSON."""
        body = error_body("invalid HTTP request (malformed, or headers over 16 KB)")
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _watch(self) -> None:
        """Put the connection in the phase its h11 state says, arming that phase's deadline once."""
        if self.transport.is_closing():
            return
        theirs, pool = self.conn.their_state, self.pool
        if theirs is h11.IDLE:  # waiting for a request's headers: fresh, kept alive, or part-sent
            if self.phase != "header":
                pool.waiting.pop(self, None)
                pool.waiting[self] = None
                self._arm(pool.limits.header_timeout, "header")
        elif theirs is h11.SEND_BODY:
            if self.phase != "body":
                self._arm(pool.limits.body_timeout + BODY_GRACE, "body")
            if self.conn.our_state in (h11.DONE, h11.MUST_CLOSE):  # answered: only the unread body is left
                pool.waiting[self] = None
            else:
                pool.waiting.pop(self, None)
        else:  # the request is in: the rest is the server's time, not the client's
            pool.waiting.pop(self, None)
            self._disarm()

    def _arm(self, seconds: float, phase: str) -> None:
        self._disarm()
        self.reading, self.phase = self.loop.call_later(seconds, self._expire, phase), phase

    def _disarm(self) -> None:
        if self.reading is not None:
            self.reading.cancel()
        self.reading, self.phase = None, ""

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():
            self.pool.closed["idle_timeout"] += 1
        super().timeout_keep_alive_handler()

    def _expire(self, why: str) -> None:
        """Close the connection; a part-sent request still gets a 408 (best effort: it may be cut off)."""
        if self.transport.is_closing():  # already on its way out: only its place is given up, now
            self._release()
            return
        partial = self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])
        if why == "header":
            why = "header_timeout" if partial else "idle_timeout"
        elif why == "body":
            why = "body_timeout"
        self.pool.closed[why] += 1
        self._release()
        if partial:
            limit = self.pool.limits.header_timeout
            message = (
                f"the request headers did not arrive within {limit:g} s"
                if why == "header_timeout"
                else "closed to make room: the server has its limit of open connections and this one had not "
                "sent a whole request"
            )
            self.transport.write(raw_response(408, "Request Timeout", message))
        if why == "send_timeout" or self.transport.get_write_buffer_size():
            self.transport.abort()  # close() would wait for a client that does not read
        else:
            self.transport.close()

    def _release(self) -> None:
        self._disarm()
        if self.writing is not None:
            self.writing.cancel()
            self.writing = None
        self.pool.waiting.pop(self, None)
        if self.counted:
            self.pool.open -= 1
            self.counted = False
