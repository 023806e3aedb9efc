"""ASGI middleware: request ids and a bounded request body. Pure ASGI, so client disconnects still reach the
endpoints (Starlette's BaseHTTPMiddleware hides them). Request metrics come from prometheus-fastapi-instrumentator
(api/app.py)."""

from __future__ import annotations

import asyncio
import re
import uuid

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rerankd.api.errors import error_response

_CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class RequestId:
    """Gives every request an id (the client's `X-Request-Id` when it is a sane token), returned in the response's
    `X-Request-Id` header and put in error bodies and log lines, so a 500 can be found in the log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"")
        request_id = given.decode() if _CLIENT_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def tag(message: Message) -> None:
            headers = message.get("headers", [])
            if message["type"] == "http.response.start" and not any(name == b"x-request-id" for name, _ in headers):
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        await self.app(scope, receive, tag)


class BodyLimit:
    """Reads at most `max_bytes` of a request body within `timeout` seconds (413 past the size, 408 past the time,
    so a client trickling its body cannot hold a connection and a task forever), then replays it to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in {"POST", "PUT", "PATCH"}:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(int(declared))(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await self._reject(size, at_least=True)(scope, receive, send)
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            message = f"request body: not received within {self.timeout:g} s (body_timeout_seconds), got {size} bytes"
            response = error_response(408, "request_timeout", message)
            response.headers["connection"] = "close"  # the rest of the body may still come: no next request
            await response(scope, receive, send)
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: disconnect notices come through
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _reject(self, size: int, at_least: bool = False) -> JSONResponse:
        got = f"at least {size}" if at_least else str(size)
        message = f"request body: at most {self.max_bytes} bytes (max_request_bytes), got {got}"
        response = error_response(413, "payload_too_large", message)
        # The rest of the body is still on its way: uvicorn closes the connection after this answer instead of
        # reading (and discarding) it until the client stops.
        response.headers["connection"] = "close"
        return response
