"""Operational endpoints: liveness, readiness, model list, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from rerankd.api.auth import require_api_key
from rerankd.api.calls import service_of

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """Alive: 200 while the process serves HTTP, also during loading; 503 once loading has failed."""
    state = service_of(request).state
    return JSONResponse(
        {"status": "failed" if state == "failed" else "ok"}, status_code=503 if state == "failed" else 200
    )


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Ready: 200 only once every model is loaded and warmed up; 503 before."""
    state = service_of(request).state
    if state == "ready":
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": state}, status_code=503, headers={"Retry-After": "2"})


@router.get("/v1/models", dependencies=[Depends(require_api_key)])
async def models(request: Request) -> dict:
    """The served models and the names each answers to (OpenAI-style list)."""
    return {
        "object": "list",
        "data": [
            {
                "id": info.id,
                "object": "model",
                "owned_by": "rerankd",
                "kind": info.kind,
                "aliases": list(info.aliases),
                "max_length": info.max_length,
                "engine": info.engine,
                "default": position == 0,
            }
            for position, info in enumerate(service_of(request).models())
        ],
    }


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")
