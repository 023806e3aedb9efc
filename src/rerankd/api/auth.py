"""Optional bearer-token auth: on when `api_keys` is set. The Cohere SDK sends its api_key this way."""

from __future__ import annotations

import secrets

from fastapi import Request

from rerankd.errors import Unauthorized


def require_api_key(request: Request) -> None:
    keys: list[str] = request.app.state.settings.api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization: expected 'Bearer <api key>'")
    if not any(secrets.compare_digest(token.strip(), key) for key in keys):
        raise Unauthorized("Authorization: unknown api key")
