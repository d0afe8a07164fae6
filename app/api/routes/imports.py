"""Bulk imports: a zip of ``<label>/<image>`` folders stored as items, as a job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status
from starlette.concurrency import run_in_threadpool

from app.api.bodies import StrictJSONRoute, metadata_objects
from app.api.deps import ServicesDep
from app.api.responses import BODY_ERRORS, errors
from app.api.schemas import ImportJob, ImportList
from app.api.uploads import display_name

router = APIRouter(prefix="/imports", tags=["imports"], route_class=StrictJSONRoute)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ImportJob,
    summary="Import a zip of labelled images as items (a job)",
    description="The archive is checked whole first (safe paths, no links, valid labels,"
    " bounded expanded size: EMBED_MAX_ARCHIVE_MB), so a bad one is refused and nothing is"
    " stored. Its images are then added in the background; follow `GET /imports/{id}`."
    " Images that cannot be decoded are skipped, counted and listed.",
    responses=errors(*BODY_ERRORS),
)
async def start_import(
    services: ServicesDep,
    archive: Annotated[UploadFile, File(description="zip of class folders: <label>/<image>")],
    metadata: Annotated[
        str | None, Form(description="a JSON object stored with every imported item")
    ] = None,
) -> ImportJob:
    data = await archive.read()
    (item_metadata,) = metadata_objects(metadata, 1)
    record = await run_in_threadpool(
        services.imports.start, data, display_name(archive.filename), item_metadata
    )
    return ImportJob.model_validate(record)


@router.get("", response_model=ImportList, summary="List imports")
async def list_imports(services: ServicesDep) -> ImportList:
    records = await run_in_threadpool(services.imports.list)
    return ImportList(imports=[ImportJob.model_validate(r) for r in records])


@router.get("/{import_id}", response_model=ImportJob, summary="An import", responses=errors(404))
async def get_import(import_id: str, services: ServicesDep) -> ImportJob:
    return ImportJob.model_validate(await run_in_threadpool(services.imports.get, import_id))


@router.delete(
    "/{import_id}",
    response_model=ImportJob,
    summary="Stop an unfinished import",
    description="It stops after the chunk it is adding; the items added so far are kept.",
    responses=errors(404),
)
async def cancel_import(import_id: str, services: ServicesDep) -> ImportJob:
    return ImportJob.model_validate(await run_in_threadpool(services.imports.cancel, import_id))
