"""k-means grouping of the stored items."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from app.api.deps import ServicesDep
from app.api.schemas import ClusterRequest, ClusterResponse
from app.errors import BadRequest

router = APIRouter(tags=["cluster"])


@router.post("/cluster", response_model=ClusterResponse, summary="Group stored items by k-means")
async def cluster(body: ClusterRequest, services: ServicesDep) -> ClusterResponse:
    if isinstance(body.k, int) and not 1 <= body.k <= services.settings.max_k:
        raise BadRequest(f"k must be between 1 and {services.settings.max_k}, or 'auto'")
    result = await run_in_threadpool(
        services.catalog.cluster, body.k, body.label, body.seed, body.projection, body.limit
    )
    return ClusterResponse.model_validate(result)
