"""Operational endpoints: liveness, readiness, model list, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from rerankd.api.auth import require_api_key, require_metrics_key
from rerankd.api.calls import service_of

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """Alive: 200 while the process serves HTTP, also during loading; 503 once loading has failed or when an
    engine is stuck (work queued, no batch finished for `replica_stall_seconds`), so an orchestrator restarts it."""
    service = service_of(request)
    if service.state == "failed":
        return JSONResponse({"status": "failed"}, status_code=503)
    if problem := service.health_problem():
        return JSONResponse({"status": "stuck", "reason": problem}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Ready: 200 once every model is loaded and warmed up and the queue is under `max_queue_seconds`; 503 before,
    and while overloaded, so a load balancer sends new work elsewhere."""
    service = service_of(request)
    if service.state != "ready":
        return JSONResponse({"status": service.state}, status_code=503, headers={"Retry-After": "2"})
    if service.overloaded:
        return JSONResponse({"status": "overloaded"}, status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"status": "ready"})


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


@router.get("/metrics", dependencies=[Depends(require_metrics_key)])
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")
