"""ASGI middleware: API-key authentication, upload concurrency and timeouts, request ids,
access logs and request metrics. (The body-size limit is FastAPI's own ``max_body_size``.)"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability import Metrics

log = logging.getLogger("app.access")


async def _reply(
    send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answers without reading the request body; the connection is closed afterwards, since
    the unread body would otherwise be taken for the next request."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ApiKeyAuth:
    """With a key configured, refuses every request outside ``public_paths`` that lacks
    ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (401) or carries a wrong key (403).

    It runs before routing, so the refusal happens before any byte of the body is read: an
    unauthenticated upload is never parsed or spooled to disk. The comparison takes
    constant time."""

    def __init__(self, app: ASGIApp, api_key: str | None, public_paths: frozenset[str]) -> None:
        self.app = app
        self.expected = api_key.encode() if api_key is not None else None
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or self.expected is None
            or scope["path"] in self.public_paths
            or scope["method"] == "OPTIONS"  # CORS preflights carry no credentials
        ):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        supplied = headers.get("x-api-key")
        authorization = headers.get("authorization", "")
        if supplied is None and authorization.lower().startswith("bearer "):
            supplied = authorization[7:].strip()
        if not supplied:
            await _reply(send, 401, "missing API key", [(b"www-authenticate", b"Bearer")])
        elif not hmac.compare_digest(supplied.encode(), self.expected):
            await _reply(send, 403, "invalid API key")
        else:
            await self.app(scope, receive, send)


class UploadGuard:
    """Bounds what slow or numerous uploads can hold.

    At most ``max_concurrent`` request bodies are read at once; a request beyond that gets 503
    at once instead of queueing behind clients that trickle bytes. A body must arrive within
    ``total_timeout`` seconds overall and with no gap longer than ``idle_timeout`` seconds,
    or the request ends with 408. (The request line and headers have their own timeout in the
    HTTP server, see ``app.server``.) The timeouts are raised as ``HTTPException`` so that
    FastAPI passes them through its body parsing instead of reporting a parse error."""

    def __init__(
        self, app: ASGIApp, max_concurrent: int, total_timeout: float, idle_timeout: float
    ) -> None:
        self.app = app
        self.slots = asyncio.Semaphore(max_concurrent)
        self.total_timeout = total_timeout
        self.idle_timeout = idle_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(Headers(scope=scope)):
            await self.app(scope, receive, send)
            return
        if self.slots.locked():
            detail = "too many uploads in progress; retry shortly"
            await _reply(send, 503, detail, [(b"retry-after", b"1")])
            return
        await self.slots.acquire()
        holding = True
        deadline = time.monotonic() + self.total_timeout

        def release() -> None:
            nonlocal holding
            if holding:
                holding = False
                self.slots.release()

        async def timed_receive() -> Message:
            if not holding:  # the body is complete: only a disconnect can still come
                return await receive()
            wait = min(self.idle_timeout, deadline - time.monotonic())
            try:  # a timeout scope, not wait_for, which runs receive() in a task of its own
                async with asyncio.timeout(max(wait, 0.0)):
                    message = await receive()
            except TimeoutError:
                release()
                raise HTTPException(
                    408, "the request body arrived too slowly", headers={"connection": "close"}
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                release()
            return message

        try:
            await self.app(scope, timed_receive, send)
        finally:
            release()


def _has_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    return "transfer-encoding" in headers or (length is not None and length.strip() != "0")


class RequestContext:
    """Gives every request an id (``X-Request-ID``, kept when the client sends a sane one),
    logs it as JSON and records its count and latency by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if given and len(given) <= 64 and given.isprintable() else None
        request_id = request_id or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500}
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route: Any = scope.get("route")
            template = getattr(route, "path", "unmatched")
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status["code"])).inc()
            self.metrics.latency.labels(method, template).observe(elapsed)
            log.info(
                "%s %s %s",
                method,
                scope.get("path", ""),
                status["code"],
                extra={
                    "request_id": request_id,
                    "method": method,
                    "path": scope.get("path", ""),
                    "status": status["code"],
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
