"""The HTTP server: uvicorn configured from `Settings`, with the time-outs a public port needs.

uvicorn times out idle keep-alive connections but not a client that trickles its request headers, so a few
hundred such clients would hold connections forever (and reach the connection cap): `HeaderTimeout` closes a
connection whose headers have not all arrived `header_timeout_seconds` after the connection or the request began.
Bodies are timed by the `BodyLimit` middleware.
"""

from __future__ import annotations

import asyncio

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from rerankd.config import Settings

_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class HeaderTimeout(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus a deadline on each request's headers."""

    header_timeout_seconds = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_seconds, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()


def build_server(app: FastAPI, settings: Settings) -> uvicorn.Server:
    protocol = type("HeaderTimeout", (HeaderTimeout,), {"header_timeout_seconds": settings.header_timeout_seconds})
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        http=protocol,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_seconds,  # type: ignore[arg-type]
        timeout_graceful_shutdown=30,
    )
    return uvicorn.Server(config)
