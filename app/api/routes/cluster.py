"""k-means grouping of the stored items."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from app.api.bodies import StrictJSONRoute, validation_error
from app.api.deps import ServicesDep
from app.api.responses import BODY_ERRORS, errors
from app.api.schemas import ClusterRequest, ClusterResponse

router = APIRouter(tags=["cluster"], route_class=StrictJSONRoute)


@router.post(
    "/cluster",
    response_model=ClusterResponse,
    summary="Group stored items by k-means",
    responses=errors(*BODY_ERRORS, 409),
)
async def cluster(body: ClusterRequest, services: ServicesDep) -> ClusterResponse:
    if isinstance(body.k, int) and body.k > services.settings.max_k:
        raise validation_error(("body", "k"), f"k must be at most {services.settings.max_k}")
    result = await run_in_threadpool(
        services.catalog.cluster,
        body.k,
        body.item_filter(),
        body.seed,
        body.projection,
        body.limit,
    )
    return ClusterResponse.model_validate(result)
