"""Every error leaves as `{"error": {"type", "message"}}` with a fitting status (and `Retry-After` on 429/503)."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rerankd.errors import RerankdError

log = logging.getLogger(__name__)


def error_response(status: int, type_: str, message: str, retry_after: float | None = None) -> JSONResponse:
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return JSONResponse({"error": {"type": type_, "message": message}}, status_code=status, headers=headers)


def describe_validation(exc: RequestValidationError) -> str:
    """Pydantic's errors as `field[index].sub: what is wrong`, the body's own field names only."""
    parts = []
    for error in exc.errors()[:5]:
        location = [part for part in error.get("loc", ()) if part != "body"]
        path = ""
        for part in location:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        if error.get("type") == "json_invalid":
            path = "body"
        parts.append(f"{path or 'body'}: {error.get('msg', 'invalid')}")
    more = len(exc.errors()) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RerankdError)
    async def _rerankd(_: Request, exc: RerankdError) -> JSONResponse:
        if exc.status >= 500 and exc.status != 503:
            log.error("%s: %s", exc.type, exc.message)
        return error_response(exc.status, exc.type, exc.message, exc.retry_after)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")
