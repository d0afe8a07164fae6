"""Nearest-neighbour search by image, stored item id or vector: one query, or several
answered in order with one forward pass for their images."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.api.bodies import (
    IMAGE_FILES,
    StrictJSONRoute,
    form_properties,
    json_object,
    json_text,
    multipart_or_json,
    single_fields,
    validate,
    validation_error,
)
from app.api.deps import ServicesDep
from app.api.responses import UPLOAD_ERRORS, errors
from app.api.schemas import (
    BatchSearchQuery,
    BatchSearchResponse,
    Neighbor,
    Prediction,
    SearchHits,
    SearchOptions,
    SearchQuery,
    SearchResponse,
    SearchTarget,
)
from app.api.uploads import display_name, form_files, json_files
from app.container import Services
from app.errors import BadRequest, UnsupportedMedia
from app.services.catalog import Query, SearchResult

router = APIRouter(tags=["search"], route_class=StrictJSONRoute)

OPENAPI_BODY = multipart_or_json(
    {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "one query image (the answer is a SearchResponse)",
        },
        "files": {
            **IMAGE_FILES,
            "description": "several query images (a BatchSearchResponse; a 'file' given as"
            " well is the first query)",
        },
        **form_properties(SearchOptions),
    },
    {
        "oneOf": [
            {"$ref": "#/components/schemas/SearchQuery"},
            {"$ref": "#/components/schemas/BatchSearchQuery"},
        ]
    },
    anyOf=[{"required": ["file"]}, {"required": ["files"]}],
)


@router.post(
    "/search",
    response_model=SearchResponse | BatchSearchResponse,
    summary="Nearest stored items and a kNN label prediction",
    description="One query (multipart `file`, or JSON `SearchQuery`) gets a SearchResponse;"
    " several (multipart `files`, or JSON `BatchSearchQuery`) get a BatchSearchResponse,"
    " results in the queries' order. `filter` restricts the candidates before the search.",
    openapi_extra=OPENAPI_BODY,
    responses=errors(*UPLOAD_ERRORS, 404),
)
async def search(request: Request, services: ServicesDep) -> SearchResponse | BatchSearchResponse:
    max_files = services.settings.max_files
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        allowed = {"file", "files", "k", "label", "filter"}
        # 'files' may hold EMBED_MAX_FILES images, and 'file' one more
        async with request.form(max_files=max_files + 1, max_fields=8) as form:
            fields = single_fields(form, allowed, repeatable=frozenset({"files"}))
            batch = bool(form.getlist("files"))
            upload = fields.pop("file", None)
            raw = []
            if isinstance(upload, UploadFile):
                raw.append((display_name(upload.filename), await upload.read()))
            elif upload is not None or not batch:
                raise BadRequest("multipart search needs an image in 'file' (or images in 'files')")
            if batch:
                raw += await form_files(form, "files")
            options = validate(SearchOptions, _form_options(fields))
        targets: list[SearchTarget] | None = None  # the queries are the images
    elif content_type.startswith("application/json"):
        body = await json_object(request)
        batch = "queries" in body
        query: SearchOptions
        if batch:
            query = validate(BatchSearchQuery, body)
            targets = list(query.queries)
        else:
            query = single = validate(SearchQuery, body)
            targets = [single]
        _check_targets(targets, services, batch)
        images = [t.image for t in targets if t.image is not None]
        location = ("body", "queries") if batch else ("body", "image")
        raw = await run_in_threadpool(json_files, images, max_files, location)
        options = query
    else:
        raise UnsupportedMedia("send multipart/form-data with a 'file' or 'files', or JSON")
    item_filter = options.item_filter()

    def work() -> list[SearchResult]:
        uploads = iter(services.runtime.decode(raw))
        if targets is None:
            queries = [Query(upload=u) for u in uploads]
        else:  # JSON: the decoded images stand in for the queries that have one, in order
            queries = [
                Query(upload=next(uploads)) if t.image else Query(item_id=t.id, vector=t.vector)
                for t in targets
            ]
        return services.catalog.search(queries, options.k, item_filter)

    results = await run_in_threadpool(work)
    version = services.runtime.snapshot.version if not results else results[0].model_version
    hits = [
        SearchHits(
            neighbors=[Neighbor(**vars(n)) for n in r.neighbors],
            prediction=Prediction(**r.prediction) if r.prediction else None,
        )
        for r in results
    ]
    if batch:
        return BatchSearchResponse(model_version=version, results=hits)
    return SearchResponse(model_version=version, **dict(hits[0]))


def _form_options(fields: dict[str, Any]) -> dict[str, Any]:
    """The search options among multipart fields; ``filter`` is JSON text there."""
    options = {k: v for k, v in fields.items() if v != ""}
    if isinstance(options.get("filter"), str):
        options["filter"] = json_text(options["filter"], ("body", "filter"))
    return options


def _check_targets(targets: list[SearchTarget], services: Services, batch: bool) -> None:
    """A limit only known at run time: the active model's vector length."""
    dim = services.runtime.snapshot.embedder.dim
    for number, target in enumerate(targets):
        if target.vector is not None and len(target.vector) != dim:
            location = ("body", "queries", number, "vector") if batch else ("body", "vector")
            raise validation_error(location, f"the vector must have {dim} values")
