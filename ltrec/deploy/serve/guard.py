"""ASGI middleware in front of the routes: the API key, the cap on requests in progress, and the deadline for
a request body. Every refusal is a one-line JSON error, like the routes' own."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

from starlette.exceptions import HTTPException

HEALTH = "/health"  # liveness: never behind the key or the caps, so a probe tells "up" from "busy"
METRICS = "/metrics"  # behind the key, but not the cap on requests in progress: load is when it is needed
RETRY_AFTER = "1"  # seconds: a full queue drains in a few batches, and slow clients are cut off in seconds


def error_body(message: str) -> bytes:
    """`{"error": message}` exactly as Starlette's JSONResponse writes it."""
    return json.dumps({"error": message}, ensure_ascii=False, separators=(",", ":")).encode()


async def reply(send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = error_body(message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def busy_headers(close: bool = False) -> list[tuple[bytes, bytes]]:
    return [(b"retry-after", RETRY_AFTER.encode()), *([(b"connection", b"close")] if close else [])]


class Guard:
    """Every route but /health: the API key when one is set (compared in constant time); then, /metrics
    aside, at most `max_requests` requests in progress (each may hold a body of up to 1 MB), and a body that
    must arrive within `body_timeout` seconds of the headers (408, and the connection is closed)."""

    def __init__(self, app, api_key: str | None, max_requests: int, pool):
        self.app, self.max_requests, self.pool = app, max_requests, pool  # pool: the worker's Connections
        self.body_timeout = pool.limits.body_timeout
        # digests of equal length: compare_digest then takes the same time whatever the given key's length
        self.key = hashlib.sha256(api_key.encode()).digest() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == HEALTH:
            return await self.app(scope, receive, send)
        if self.key:
            refused = self._refused(scope["headers"])
            if refused:
                return await reply(send, 401, refused, [(b"www-authenticate", b"Bearer")])
        if scope["path"] == METRICS:
            return await self.app(scope, receive, send)
        if self.pool.busy >= self.max_requests:
            self.pool.refused += 1
            return await reply(
                send,
                503,
                f"server busy ({self.max_requests:,} requests in progress); retry after {RETRY_AFTER}s",
                busy_headers(),
            )
        self.pool.busy += 1
        try:
            await self.app(scope, self._timed(receive), send)
        finally:
            self.pool.busy -= 1

    def _refused(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        given = []
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.strip().partition(b" ")
                given.append(token.strip() if scheme.lower() == b"bearer" else b"")
            elif name == b"x-api-key":
                given.append(value.strip())
        if not given:
            return "no API key: send the header Authorization: Bearer KEY (or X-API-Key: KEY)"
        good = False
        for token in given:  # every one compared, so the time does not tell which header matched
            good |= hmac.compare_digest(hashlib.sha256(token).digest(), self.key)
        return None if good else "wrong API key"

    def _timed(self, receive):
        """`receive`, with one deadline for the whole body; once the body is in, untimed (later reads only
        wait for a disconnect)."""
        loop = asyncio.get_running_loop()
        deadline, done = loop.time() + self.body_timeout, [False]

        async def timed():
            if done[0]:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                self.pool.closed["body_timeout"] += 1  # the answer asks to close the connection
                raise HTTPException(
                    408,
                    f"the request body did not arrive within {self.body_timeout:g} s of its headers",
                    headers={"Connection": "close"},
                ) from None
            done[0] = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return timed


class Overloaded:
    """The app of a connection that arrived when every open connection had a request in progress: 503 JSON
    with Retry-After, and the connection is closed; /health is still answered."""

    def __init__(self, app, pool):
        self.app, self.pool = app, pool  # pool: the worker's Connections, which count these answers

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == HEALTH:
            return await self.app(scope, receive, send)
        self.pool.refused += 1
        await reply(
            send,
            503,
            f"server busy ({self.pool.limits.max_connections:,} connections open, each with a "
            f"request in progress); retry after {RETRY_AFTER}s",
            busy_headers(close=True),
        )
