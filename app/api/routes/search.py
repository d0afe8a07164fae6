"""Nearest-neighbour search by uploaded image, stored item id or vector."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.api.bodies import (
    form_properties,
    json_object,
    single_fields,
    validate,
    validation_error,
)
from app.api.deps import ServicesDep
from app.api.responses import UPLOAD_ERRORS, errors
from app.api.schemas import Neighbor, Prediction, SearchOptions, SearchQuery, SearchResponse
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
                        **form_properties(SearchOptions),
                    },
                    "additionalProperties": False,
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
    responses=errors(*UPLOAD_ERRORS, 404),
)
async def search(request: Request, services: ServicesDep) -> SearchResponse:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=8) as form:
            fields = single_fields(form, {"file", "k", "label"})
            upload = fields.pop("file", None)
            if not isinstance(upload, UploadFile):
                raise BadRequest("multipart search needs an image in the 'file' field")
            options = validate(SearchOptions, {k: v for k, v in fields.items() if v != ""})
            name, data = display_name(upload.filename), await upload.read()

        def by_image() -> SearchResult:
            decoded = services.runtime.decode([(name, data)])[0]
            return services.catalog.search(upload=decoded, k=options.k, label=options.label)

        result = await run_in_threadpool(by_image)
    elif content_type.startswith("application/json"):
        query = validate(SearchQuery, await json_object(request))
        dim = services.runtime.snapshot.embedder.dim
        if query.vector is not None and len(query.vector) != dim:
            raise validation_error(("body", "vector"), f"the vector must have {dim} values")
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
