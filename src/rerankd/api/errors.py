"""Every error leaves as `{"error": {"type", "message"}}` with a fitting status (and `Retry-After` on 429/503)."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from rerankd.errors import RerankdError

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    type: str
    message: str = Field(description="What is wrong, naming the field and the limit.")


class ErrorBody(BaseModel):
    error: ErrorDetail


_RETRY = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
# Every status a rerank endpoint can answer besides 200, for the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "A broken rule or limit (the message names the field and the limit)."},
    401: {"model": ErrorBody, "description": "Missing or unknown API key (when `api_keys` is set)."},
    404: {"model": ErrorBody, "description": "The model is not served here."},
    408: {"model": ErrorBody, "description": "The body did not arrive within `body_timeout_seconds`."},
    413: {"model": ErrorBody, "description": "The body, the query or an input that may not be truncated is too large."},
    422: {"model": ErrorBody, "description": "A field has the wrong type."},
    429: {"model": ErrorBody, "description": "Over `max_queue_seconds` of queued work.", "headers": _RETRY},
    500: {"model": ErrorBody, "description": "Internal error; the message carries the request id of the log line."},
    503: {"model": ErrorBody, "description": "Loading, shutting down or over the connection cap.", "headers": _RETRY},
    504: {"model": ErrorBody, "description": "Not answered within the request's deadline (`timeout_ms`)."},
}


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
    async def _rerankd(request: Request, exc: RerankdError) -> JSONResponse:
        if exc.status >= 500 and exc.status not in (503, 504):
            return _internal(request, exc)
        return error_response(exc.status, exc.type, exc.message, exc.retry_after)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error_response(exc.status_code, "http_error", str(exc.detail))
        response.headers.update(exc.headers or {})  # 405 carries `Allow`
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _internal(request, exc)


def _internal(request: Request, exc: Exception) -> JSONResponse:
    """A 500 says only "internal error" and the request id; the log line with that id has the traceback."""
    request_id = getattr(request.state, "request_id", "")  # set by middleware.RequestId
    log.error("request %s failed: %s: %s", request_id, type(exc).__name__, exc, exc_info=exc)
    response = error_response(500, "internal_error", f"internal error (request id {request_id})")
    response.headers["X-Request-Id"] = request_id  # this answer bypasses the middleware that adds it
    return response
