"""Running a rerank for an HTTP request: the service call is cancelled when the client goes away, which drops
the request's queued work; the answer carries what ran as `X-Rerankd-*` headers in every dialect."""

from __future__ import annotations

import asyncio

from fastapi import Request, Response

from rerankd.api.strategy import strategy_headers
from rerankd.pipeline.types import RerankRequest, RerankResult, RerankService


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def service_of(request: Request) -> RerankService:
    return request.app.state.service


async def _disconnected(request: Request) -> None:
    # The body was already read, so the next message is the disconnect (or the end of the response).
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def rerank_for(request: Request, response: Response, rerank_request: RerankRequest) -> RerankResult:
    work = asyncio.ensure_future(service_of(request).rerank(rerank_request))
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if work not in done:
        work.cancel()
        raise ClientGone
    result = work.result()
    response.headers.update(strategy_headers(result))
    return result
