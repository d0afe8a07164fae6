"""Embedding uploaded images without storing them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from starlette.concurrency import run_in_threadpool

from app.api.deps import ServicesDep
from app.api.responses import UPLOAD_ERRORS, errors
from app.api.schemas import Embedding, EmbedResponse
from app.api.uploads import read_files

router = APIRouter(tags=["embeddings"])


@router.post(
    "/embed",
    response_model=EmbedResponse,
    summary="Embed images",
    responses=errors(*UPLOAD_ERRORS),
)
async def embed(
    services: ServicesDep,
    files: Annotated[list[UploadFile], File(description="one or more images")],
) -> EmbedResponse:
    raw = await read_files(files)
    snapshot = services.runtime.snapshot

    def work() -> list[list[float]]:
        uploads = services.runtime.decode(raw)
        vectors = services.runtime.embed_images(snapshot.embedder, [u.image for u in uploads])
        return vectors.tolist()

    vectors = await run_in_threadpool(work)
    return EmbedResponse(
        model_version=snapshot.version,
        dim=snapshot.embedder.dim,
        embeddings=[
            Embedding(filename=name, vector=vector)
            for (name, _), vector in zip(raw, vectors, strict=True)
        ],
    )
