"""Embedding images without storing them."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Header, Request, Response
from starlette.concurrency import run_in_threadpool

from app.api.bodies import (
    IMAGE_FILES,
    StrictJSONRoute,
    json_object,
    multipart_or_json,
    single_fields,
    validate,
)
from app.api.deps import ServicesDep
from app.api.responses import UPLOAD_ERRORS, errors
from app.api.schemas import Embedding, EmbedJson, EmbedResponse
from app.api.uploads import form_files, json_files
from app.api.vectors import NPY_MEDIA_TYPE, npy_response, prefers_npy
from app.errors import UnsupportedMedia

router = APIRouter(tags=["embeddings"], route_class=StrictJSONRoute)

OPENAPI_BODY = multipart_or_json(
    {"files": IMAGE_FILES}, {"$ref": "#/components/schemas/EmbedJson"}, required=["files"]
)
NPY_ANSWER = {
    "description": (
        f"The vectors as JSON; with `Accept: {NPY_MEDIA_TYPE}`, as one float32 NumPy array of "
        "shape (files, dim), rows in upload order, with the model version and dimension in "
        "the `X-Model-Version` and `X-Embedding-Dim` headers."
    ),
    "content": {NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    "headers": {
        "X-Model-Version": {"description": "(.npy answers)", "schema": {"type": "string"}},
        "X-Embedding-Dim": {"description": "(.npy answers)", "schema": {"type": "integer"}},
    },
}


@router.post(
    "/embed",
    response_model=EmbedResponse,
    summary="Embed images",
    description="Images as multipart `files`, or as base64 in JSON (`EmbedJson`).",
    openapi_extra=OPENAPI_BODY,
    responses={**errors(*UPLOAD_ERRORS), 200: NPY_ANSWER},
)
async def embed(
    request: Request,
    services: ServicesDep,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> EmbedResponse | Response:
    max_files = services.settings.max_files
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        async with request.form(max_files=max_files, max_fields=8) as form:
            single_fields(form, {"files"}, repeatable=frozenset({"files"}))
            raw = await form_files(form, "files")
    elif content_type.startswith("application/json"):
        body = validate(EmbedJson, await json_object(request))
        raw = await run_in_threadpool(json_files, body.images, max_files, ("body", "images"))
    else:
        raise UnsupportedMedia("send multipart/form-data 'files', or JSON images")
    snapshot = services.runtime.snapshot

    def answer(vectors: np.ndarray) -> list[list[float]] | Response:
        if prefers_npy(accept):
            dim = str(snapshot.embedder.dim)
            headers = {"X-Model-Version": snapshot.version, "X-Embedding-Dim": dim}
            return npy_response(vectors, headers)
        return vectors.tolist()

    def work() -> list[list[float]] | Response:
        uploads = services.runtime.decode(raw)
        return answer(services.runtime.embed_uploads(snapshot.embedder, uploads))

    thumbnails = await services.runtime.embed_thumbnails(snapshot.embedder, raw)
    # formatting at most max_files vectors is cheap enough for the event loop
    result = await run_in_threadpool(work) if thumbnails is None else answer(thumbnails)
    if isinstance(result, Response):
        return result
    return EmbedResponse(
        model_version=snapshot.version,
        dim=snapshot.embedder.dim,
        embeddings=[
            Embedding(filename=name, vector=vector)
            for (name, _), vector in zip(raw, result, strict=True)
        ],
    )
