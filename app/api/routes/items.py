"""Stored, labelled items: add, list, read, delete."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Path, Query, UploadFile, status
from fastapi.responses import FileResponse
from pydantic import StringConstraints
from starlette.concurrency import run_in_threadpool

from app.api.deps import ServicesDep
from app.api.responses import UPLOAD_ERRORS, errors
from app.api.schemas import MAX_ID, Item, ItemList, ItemsCreated, ItemSummary
from app.api.uploads import read_files
from app.errors import BadRequest
from app.services.catalog import LABEL_PATTERN, MAX_METADATA_BYTES, check_label
from app.store.database import ItemRecord

router = APIRouter(prefix="/items", tags=["items"])

IMAGE_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "gif": "image/gif",
    "avif": "image/avif",
    "heic": "image/heic",
}
ItemId = Annotated[int, Path(ge=1, le=MAX_ID, description="item id")]
Label = Annotated[str, StringConstraints(pattern=LABEL_PATTERN.pattern)]


def _labels(labels: list[str] | None, count: int) -> list[str | None]:
    if not labels:
        return [None] * count
    if len(labels) == 1:
        return [check_label(labels[0])] * count
    if len(labels) != count:
        raise BadRequest(f"give one label per file ({count}) or one for all, not {len(labels)}")
    return [check_label(label) for label in labels]


def _metadata(raw: str | None, count: int) -> list[dict[str, Any]]:
    """A JSON object for every file, or a JSON list of objects, one per file."""
    if raw is None or raw == "":
        return [{}] * count
    if len(raw.encode()) > MAX_METADATA_BYTES:
        raise BadRequest(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"metadata is not valid JSON: {exc.msg}") from exc
    if isinstance(value, dict):
        return [value] * count
    if isinstance(value, list) and len(value) == count and all(isinstance(v, dict) for v in value):
        return value
    raise BadRequest("metadata must be a JSON object, or a list of objects, one per file")


def to_item(record: ItemRecord, model_version: str) -> Item:
    return Item(
        id=record.id,
        label=record.label,
        filename=record.filename,
        metadata=record.metadata,
        image_hash=record.image_hash,
        model_version=model_version,
        created_at=record.created_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ItemsCreated,
    summary="Store labelled images",
    responses=errors(*UPLOAD_ERRORS),
)
async def add_items(
    services: ServicesDep,
    files: Annotated[list[UploadFile], File(description="one or more images")],
    labels: Annotated[
        list[Label] | None, Form(description="one label per file, or one for all")
    ] = None,
    metadata: Annotated[
        str | None, Form(description="JSON object, or list of objects, one per file")
    ] = None,
) -> ItemsCreated:
    raw = await read_files(files)
    item_labels = _labels(labels, len(raw))
    item_metadata = _metadata(metadata, len(raw))

    def work() -> list[ItemRecord]:
        return services.catalog.add(services.runtime.decode(raw), item_labels, item_metadata)

    records = await run_in_threadpool(work)
    return ItemsCreated(
        items=[ItemSummary(id=r.id, label=r.label, filename=r.filename) for r in records]
    )


@router.get("", response_model=ItemList, summary="List items", responses=errors(422))
async def list_items(
    services: ServicesDep,
    label: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> ItemList:
    records, total = await run_in_threadpool(services.catalog.list, label, limit, offset)
    version = services.runtime.snapshot.version
    return ItemList(
        items=[to_item(r, version) for r in records], total=total, limit=limit, offset=offset
    )


@router.get("/{item_id}", response_model=Item, summary="Read one item", responses=errors(404, 422))
async def get_item(
    item_id: ItemId,
    services: ServicesDep,
    include: Annotated[
        Literal["vector"] | None, Query(description="`vector`: add the active model's vector")
    ] = None,
) -> Item:
    snapshot = services.runtime.snapshot
    record = await run_in_threadpool(services.catalog.get, item_id)
    item = to_item(record, snapshot.version)
    if include == "vector":
        vector = await run_in_threadpool(snapshot.index.vector, item_id)
        item.vector = vector.tolist() if vector is not None else None
    return item


@router.get(
    "/{item_id}/image",
    summary="The stored image of one item",
    response_class=FileResponse,
    responses={**errors(404, 422), 200: {"content": {"image/*": {}}}},
)
async def get_item_image(item_id: ItemId, services: ServicesDep) -> FileResponse:
    record = await run_in_threadpool(services.catalog.get, item_id)
    path = services.catalog.images.path(record.image_hash, record.image_ext)
    return FileResponse(path, media_type=IMAGE_TYPES[record.image_ext])


@router.delete(
    "/{item_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete one item",
    responses=errors(404, 422),
)
async def delete_item(item_id: ItemId, services: ServicesDep) -> None:
    await run_in_threadpool(services.catalog.delete, item_id)
