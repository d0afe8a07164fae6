"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.bodies import StrictJSONRoute
from app.api.schemas import Status

router = APIRouter(tags=["health"], route_class=StrictJSONRoute)


@router.get("/healthz", response_model=Status, summary="Liveness")
def healthz() -> Status:
    return Status(status="ok")


@router.get(
    "/readyz",
    response_model=Status,
    summary="Readiness: the model is loaded and the index is open",
    responses={503: {"description": "still starting"}},
)
def readyz(request: Request) -> Response:
    services = getattr(request.app.state, "services", None)
    if services is None or not services.runtime.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
