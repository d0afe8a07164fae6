"""Embedding uploaded images without storing them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Header, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from app.api.deps import ServicesDep
from app.api.responses import UPLOAD_ERRORS, errors
from app.api.schemas import Embedding, EmbedResponse
from app.api.uploads import read_files
from app.api.vectors import NPY_MEDIA_TYPE, npy_response, prefers_npy

router = APIRouter(tags=["embeddings"])

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
    responses={**errors(*UPLOAD_ERRORS), 200: NPY_ANSWER},
)
async def embed(
    services: ServicesDep,
    files: Annotated[list[UploadFile], File(description="one or more images")],
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> EmbedResponse | Response:
    raw = await read_files(files)
    snapshot = services.runtime.snapshot

    def work() -> list[list[float]] | Response:
        uploads = services.runtime.decode(raw)
        vectors = services.runtime.embed_uploads(snapshot.embedder, uploads)
        if prefers_npy(accept):
            dim = str(snapshot.embedder.dim)
            headers = {"X-Model-Version": snapshot.version, "X-Embedding-Dim": dim}
            return npy_response(vectors, headers)
        return vectors.tolist()

    result = await run_in_threadpool(work)
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
