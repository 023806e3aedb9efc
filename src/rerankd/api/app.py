"""The app factory: one FastAPI app, every dialect, one service behind it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator.metrics import Info

from rerankd import __version__
from rerankd.api import cohere, ops, tei
from rerankd.api.calls import ClientGone
from rerankd.api.errors import install_error_handlers
from rerankd.api.middleware import BodyLimit, RequestId
from rerankd.config import Settings
from rerankd.metrics import Metrics
from rerankd.pipeline.types import RerankService

DESCRIPTION = """Reranking with cross-encoders and bi-encoders. Cohere v2 (`/v2/rerank`), Cohere v1 and Jina
(`/v1/rerank`), and TEI (`/rerank`) request shapes, one engine behind them."""


def create_app(
    settings: Settings | None = None, service: RerankService | None = None, metrics: Metrics | None = None
) -> FastAPI:
    """Build the app. Without a `service`, it serves `settings.model` in-process, loading in the background."""
    settings = settings or Settings()
    metrics = metrics or Metrics()
    if service is None:
        # Imported here: the fleet's ingress builds this app around remote replicas and must not load the
        # model stack (transformers, onnxruntime) at all.
        from rerankd.pipeline.service import LocalService

        service = LocalService(settings, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        service.close()

    app = FastAPI(title="rerankd", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.api_keys = [key.encode("utf-8") for key in settings.accepted_api_keys()]
    app.state.service = service
    app.state.metrics = metrics
    install_error_handlers(app)

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, __: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; the status marks the log line and metrics

    for router in (cohere.router, tei.router, ops.router):
        app.include_router(router)

    def observe(info: Info) -> None:
        route = "other" if info.modified_handler == "none" else info.modified_handler  # scanners add no labels
        metrics.requests.labels(route, info.modified_status).inc()
        metrics.request_seconds.labels(route).observe(info.modified_duration)

    # Added innermost first: request ids, then metrics (they see 413/408 too), then the body limit.
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes, timeout=settings.body_timeout_seconds)
    Instrumentator(should_group_status_codes=False, registry=metrics.registry).add(observe).instrument(app)
    app.add_middleware(RequestId)
    return app
