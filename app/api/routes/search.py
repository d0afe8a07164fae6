"""Nearest-neighbour search by uploaded image, stored item id or vector."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.api.bodies import json_object, validate
from app.api.deps import ServicesDep
from app.api.responses import NOT_FOUND, UPLOAD_ERRORS
from app.api.schemas import Neighbor, Prediction, SearchQuery, SearchResponse
from app.api.uploads import display_name
from app.errors import BadRequest, UnsupportedMedia
from app.services.catalog import SearchResult

router = APIRouter(tags=["search"])

OPENAPI_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
                        "label": {"type": "string", "maxLength": 64},
                    },
                }
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/SearchQuery"}},
        },
    }
}


@router.post(
    "/search",
    response_model=SearchResponse,
    summary="Nearest stored items and a kNN label prediction",
    openapi_extra=OPENAPI_BODY,
    responses={**UPLOAD_ERRORS, **NOT_FOUND},
)
async def search(request: Request, services: ServicesDep) -> SearchResponse:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=8) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise BadRequest("multipart search needs an image in the 'file' field")
            fields = {k: form.get(k) for k in ("k", "label") if form.get(k) not in (None, "")}
            query = validate(SearchQuery, fields)
            name, data = display_name(upload.filename), await upload.read()

        def by_image() -> SearchResult:
            decoded = services.runtime.decode([(name, data)])[0]
            return services.catalog.search(upload=decoded, k=query.k, label=query.label)

        result = await run_in_threadpool(by_image)
    elif content_type.startswith("application/json"):
        query = validate(SearchQuery, await json_object(request))
        if (query.id is None) == (query.vector is None):
            raise BadRequest("give exactly one of 'id' and 'vector'")
        result = await run_in_threadpool(
            lambda: services.catalog.search(
                item_id=query.id, vector=query.vector, k=query.k, label=query.label
            )
        )
    else:
        raise UnsupportedMedia("send multipart/form-data with a 'file', or JSON")
    return SearchResponse(
        model_version=result.model_version,
        neighbors=[Neighbor(**vars(n)) for n in result.neighbors],
        prediction=Prediction(**result.prediction) if result.prediction else None,
    )
