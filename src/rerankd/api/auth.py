"""Optional bearer-token auth: on when `api_keys` is set. The Cohere SDK sends its api_key this way."""

from __future__ import annotations

import hmac

from fastapi import Request

from rerankd.errors import Unauthorized


def require_api_key(request: Request) -> None:
    keys: list[bytes] = request.app.state.api_keys
    if not keys:
        return
    # Compared as bytes: headers may carry any octets (Starlette decodes them as Latin-1), keys any Unicode.
    header = request.headers.get("authorization", "").encode("latin-1")
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        raise Unauthorized("Authorization: expected 'Bearer <api key>'")
    # Every key is compared, so the time taken does not tell which one nearly matched.
    matches = [hmac.compare_digest(token.strip(), key) for key in keys]
    if not any(matches):
        raise Unauthorized("Authorization: unknown api key")


def require_metrics_key(request: Request) -> None:
    """/metrics takes the API's keys too, unless `metrics_require_key` is off (a scraper that cannot send one)."""
    if request.app.state.settings.metrics_require_key:
        require_api_key(request)
