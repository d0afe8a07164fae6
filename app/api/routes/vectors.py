"""Vectors out: every stored item's vector of the active model, streamed for other systems."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.api.bodies import StrictJSONRoute
from app.api.deps import ServicesDep
from app.api.responses import errors
from app.api.vectors import JSONL_MEDIA_TYPE, NPY_MEDIA_TYPE, jsonl_export, npy_export

router = APIRouter(tags=["vectors"], route_class=StrictJSONRoute)

EXPORT_ANSWER = {
    "description": (
        "Every stored item that has a vector of the active model, ascending by id, as one "
        "database snapshot (items added or deleted while it streams are not part of it). "
        f'`jsonl` ({JSONL_MEDIA_TYPE}): one `{{"id", "external_id", "label", "vector"}}` '
        f"object per line. `npy` ({NPY_MEDIA_TYPE}): one NumPy structured array with fields "
        "`id` (int64), `external_id` (unicode, 128 characters) and `label` (unicode, 64 "
        "characters), both empty for none, and `vector` (float32, dim); "
        "`numpy.load(..., allow_pickle=False)` reads it."
    ),
    "content": {
        JSONL_MEDIA_TYPE: {"schema": {"type": "string"}},
        NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
    },
    "headers": {
        "X-Model-Version": {
            "description": "the model the vectors are of",
            "schema": {"type": "string"},
        },
        "X-Item-Count": {"description": "how many items follow", "schema": {"type": "integer"}},
    },
}


@router.get(
    "/vectors",
    summary="Export every stored item's vector",
    response_class=StreamingResponse,
    responses={200: EXPORT_ANSWER, **errors(404, 409, 422)},
)
async def export_vectors(
    services: ServicesDep,
    format: Annotated[Literal["jsonl", "npy"], Query(description="the encoding")] = "jsonl",
    model_version: Annotated[
        str | None,
        Query(max_length=200, description="default: the active model (the only one with vectors)"),
    ] = None,
) -> StreamingResponse:
    export = await run_in_threadpool(services.catalog.export_vectors, model_version)
    version, dim, total, pages = export
    headers = {"X-Model-Version": version, "X-Item-Count": str(total)}
    if format == "npy":
        body = npy_export(total, dim, pages)
        return StreamingResponse(body, headers=headers, media_type=NPY_MEDIA_TYPE)
    return StreamingResponse(jsonl_export(pages), headers=headers, media_type=JSONL_MEDIA_TYPE)
