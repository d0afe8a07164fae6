"""Stored, labelled items: add, list, read, replace, delete.

An item has the service's integer id and, optionally, an external id of the caller's
(``PUT /items/{external_id}`` creates or replaces the item that has it). ``/items/{item_id}``
takes either: digits are an item id, anything else an external id (which therefore may not
be only digits)."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Path, Query, Request, Response, UploadFile, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import Field, ValidationError
from starlette.concurrency import run_in_threadpool

from app.api.bodies import (
    IMAGE_FILES,
    StrictJSONRoute,
    form_properties,
    json_object,
    json_text,
    metadata_objects,
    multipart_or_json,
    single_fields,
    validate,
)
from app.api.deps import ServicesDep
from app.api.idempotency import IdempotencyKeyHeader, fingerprint, raw_files_digest
from app.api.responses import UPLOAD_ERRORS, errors
from app.api.schemas import (
    MAX_ID,
    ExternalId,
    Filtered,
    Item,
    ItemList,
    ItemsCreated,
    ItemsForm,
    ItemsJson,
    ItemSummary,
    Label,
)
from app.api.uploads import form_files, json_files, read_files
from app.errors import BadRequest, Replayed, UnsupportedMedia
from app.services.catalog import LABEL_MAX
from app.store.database import IdempotencyKey, ItemRecord
from app.store.filters import ItemFilter

router = APIRouter(prefix="/items", tags=["items"], route_class=StrictJSONRoute)

IMAGE_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "gif": "image/gif",
    "avif": "image/avif",
    "heic": "image/heic",
}
ItemNumber = Annotated[int, Field(ge=1, le=MAX_ID)]
ItemRef = Annotated[
    ItemNumber | ExternalId,
    Path(description="the item id, or the external id the caller gave the item"),
]


def _labels(labels: list[str] | None, count: int) -> list[str | None]:
    if not labels:
        return [None] * count
    if len(labels) == 1:
        return [labels[0]] * count
    if len(labels) != count:
        raise BadRequest(f"give one label per file ({count}) or one for all, not {len(labels)}")
    return list(labels)


def _external_ids(external_ids: list[str] | None, count: int) -> list[str | None]:
    if not external_ids:
        return [None] * count
    if len(external_ids) != count:
        raise BadRequest(f"give one external id per file ({count}), not {len(external_ids)}")
    if len(set(external_ids)) != count:
        raise BadRequest("external ids must differ from each other")
    return list(external_ids)


def to_item(record: ItemRecord, model_version: str) -> Item:
    return Item(
        id=record.id,
        external_id=record.external_id,
        label=record.label,
        filename=record.filename,
        metadata=record.metadata,
        image_hash=record.image_hash,
        model_version=model_version,
        created_at=record.created_at,
    )


OPENAPI_ADD_BODY = multipart_or_json(
    {"files": IMAGE_FILES, **form_properties(ItemsForm)},
    {"$ref": "#/components/schemas/ItemsJson"},
    required=["files"],
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ItemsCreated,
    summary="Store labelled images",
    description="Images as multipart `files` (with `labels`, `metadata` as JSON text and "
    "`external_ids` fields), or as base64 in JSON (`ItemsJson`).",
    openapi_extra=OPENAPI_ADD_BODY,
    responses=errors(*UPLOAD_ERRORS, 409),
)
async def add_items(
    request: Request, services: ServicesDep, idempotency_key: IdempotencyKeyHeader = None
) -> ItemsCreated:
    max_files = services.settings.max_files
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        fields = {"files", "labels", "metadata", "external_ids"}
        repeatable = frozenset({"files", "labels", "external_ids"})
        async with request.form(max_files=max_files, max_fields=2 * max_files + 8) as form:
            text = single_fields(form, fields, repeatable)
            body = validate(
                ItemsForm,
                {
                    "labels": form.getlist("labels") or None,
                    "external_ids": form.getlist("external_ids") or None,
                    "metadata": text.get("metadata") or None,
                },
            )
            raw = await form_files(form, "files")
        metadata = metadata_objects(body.metadata, len(raw))
    elif content_type.startswith("application/json"):
        json_body = validate(ItemsJson, await json_object(request))
        raw = await run_in_threadpool(json_files, json_body.images, max_files, ("body", "images"))
        body = ItemsForm(labels=json_body.labels, external_ids=json_body.external_ids)
        metadata = metadata_objects(
            json.dumps(json_body.metadata) if json_body.metadata is not None else None, len(raw)
        )
    else:
        raise UnsupportedMedia("send multipart/form-data 'files', or JSON images")
    item_labels = _labels(body.labels, len(raw))
    item_external_ids = _external_ids(body.external_ids, len(raw))
    idempotency = None
    if idempotency_key is not None:
        request_print = [raw_files_digest(raw), item_labels, metadata, item_external_ids]
        idempotency = IdempotencyKey("add_items", idempotency_key, fingerprint(request_print))

    def work() -> list[ItemRecord]:
        uploads = services.runtime.decode(raw)
        return services.catalog.add(uploads, item_labels, metadata, item_external_ids, idempotency)

    try:
        records = await run_in_threadpool(work)
    except Replayed as replay:  # the first answer, as it was
        return ItemsCreated(items=[ItemSummary(**summary) for summary in replay.result])
    return ItemsCreated(
        items=[
            ItemSummary(id=r.id, external_id=r.external_id, label=r.label, filename=r.filename)
            for r in records
        ]
    )


def parse_filter(raw: str | None, label: str | None) -> ItemFilter | None:
    """The ``filter`` query parameter (a JSON object, as in a search body) with ``label``."""
    value = json_text(raw, ("query", "filter")) if raw else None
    try:
        query = Filtered.model_validate({"filter": value, "label": label}, strict=True)
    except ValidationError as exc:
        located = [{**error, "loc": ("query", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(located) from exc
    return query.item_filter()


@router.get("", response_model=ItemList, summary="List items", responses=errors(422))
async def list_items(
    services: ServicesDep,
    label: Annotated[str | None, Query(max_length=LABEL_MAX)] = None,
    filter: Annotated[
        str | None,
        Query(
            max_length=2048,  # URLs stay within what HTTP servers take
            description="exact matches as a JSON object, as in search: "
            '{"label": "cat", "metadata.source": "cifar"}',
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> ItemList:
    item_filter = parse_filter(filter, label)
    records, total = await run_in_threadpool(
        services.catalog.list_items, item_filter, limit, offset
    )
    version = services.runtime.snapshot.version
    return ItemList(
        items=[to_item(r, version) for r in records], total=total, limit=limit, offset=offset
    )


@router.get("/{item_id}", response_model=Item, summary="Read one item", responses=errors(404, 422))
async def get_item(
    item_id: ItemRef,
    services: ServicesDep,
    include: Annotated[
        Literal["vector"] | None, Query(description="`vector`: add the active model's vector")
    ] = None,
) -> Item:
    snapshot = services.runtime.snapshot
    record = await run_in_threadpool(services.catalog.get, item_id)
    item = to_item(record, snapshot.version)
    if include == "vector":
        vector = await run_in_threadpool(snapshot.index.vector, record.id)
        item.vector = vector.tolist() if vector is not None else None
    return item


@router.put(
    "/{item_id}",
    response_model=Item,
    summary="Create or replace the item with your own id (or replace one by item id)",
    responses={
        **errors(*UPLOAD_ERRORS, 404),
        201: {"model": Item, "description": "created: no item had this external id"},
    },
)
async def put_item(
    item_id: Annotated[
        ItemNumber | ExternalId,
        Path(
            description=(
                "your own id for the item (its external id: 1-128 letters, digits and "
                "._~:@+=-, starting with a letter or digit, not only digits), or the item id "
                "of an item that exists"
            )
        ),
    ],
    services: ServicesDep,
    response: Response,
    file: Annotated[UploadFile, File(description="the item's image")],
    label: Annotated[Label | None, Form(description="its label (none if left out)")] = None,
    metadata: Annotated[str | None, Form(description="a JSON object ({} if left out)")] = None,
) -> Item:
    """Creates the item with this external id (201), or replaces the image, label and
    metadata of the item with this external or item id (200; an unknown item id is 404):
    what is left out is cleared, as with any PUT. Its ids stay the same."""
    ((name, data),) = await read_files([file])
    (item_metadata,) = metadata_objects(metadata, 1)

    def work() -> tuple[ItemRecord, bool]:
        (upload,) = services.runtime.decode([(name, data)])
        return services.catalog.put(item_id, upload, label, item_metadata)

    record, created = await run_in_threadpool(work)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return to_item(record, services.runtime.snapshot.version)


@router.get(
    "/{item_id}/image",
    summary="The stored image of one item",
    response_class=FileResponse,
    responses={**errors(404, 422), 200: {"content": {"image/*": {}}}},
)
async def get_item_image(item_id: ItemRef, services: ServicesDep) -> FileResponse:
    record = await run_in_threadpool(services.catalog.get, item_id)
    path = services.catalog.images.path(record.image_hash, record.image_ext)
    return FileResponse(path, media_type=IMAGE_TYPES[record.image_ext])


@router.delete(
    "/{item_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete one item",
    responses=errors(404, 422),
)
async def delete_item(item_id: ItemRef, services: ServicesDep) -> None:
    await run_in_threadpool(services.catalog.delete, item_id)
