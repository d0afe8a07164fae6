"""Training jobs: start, list, read, cancel and forget."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, status
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.api.bodies import StrictJSONRoute, json_object, single_fields, strict_json, validate
from app.api.deps import ServicesDep
from app.api.idempotency import IdempotencyKeyHeader, fingerprint, raw_files_digest
from app.api.responses import BODY_ERRORS, errors
from app.api.schemas import Job, JobList, TrainRequest
from app.errors import BadRequest, Conflict, NotFound, Replayed, UnsupportedMedia
from app.store.database import IdempotencyKey

router = APIRouter(prefix="/train", tags=["training"], route_class=StrictJSONRoute)

OPENAPI_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/TrainRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["archive"],
                    "properties": {
                        "archive": {
                            "type": "string",
                            "format": "binary",
                            "description": "zip of class folders: <label>/<image>",
                        },
                        "params": {
                            "type": "string",
                            "description": "TrainRequest as JSON (its dataset is ignored)",
                        },
                    },
                    "additionalProperties": False,
                }
            },
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Job,
    summary="Start a training job (in its own process)",
    openapi_extra=OPENAPI_BODY,
    responses=errors(*BODY_ERRORS, 403, 409, 415),
)
async def start_job(
    request: Request, services: ServicesDep, idempotency_key: IdempotencyKeyHeader = None
) -> Job:
    """With an `Idempotency-Key` used before for the same request, no job starts: the
    answer is the job that the first request started, as it is now."""
    content_type = request.headers.get("content-type", "")
    archive: bytes | None = None
    if content_type.startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=4) as form:
            fields = single_fields(form, {"archive", "params"})
            upload = fields.get("archive")
            if not isinstance(upload, UploadFile):
                raise BadRequest("multipart training needs a zip file in the 'archive' field")
            raw_params = fields.get("params") or "{}"
            if not isinstance(raw_params, str):
                raise BadRequest("'params' must be a JSON text field")
            try:
                params = strict_json(raw_params)
            except json.JSONDecodeError as exc:
                raise BadRequest(f"params is not valid JSON: {exc.msg}") from exc
            if not isinstance(params, dict):
                raise BadRequest("params must be a JSON object")
            body = validate(TrainRequest, {**params, "dataset": {"source": "archive"}})
            archive = await upload.read()
    elif content_type.startswith("application/json"):
        body = validate(TrainRequest, await json_object(request))
        if body.dataset.source == "archive":
            raise BadRequest("an archive dataset is uploaded as multipart 'archive'")
    else:
        raise UnsupportedMedia("send JSON, or multipart/form-data with an 'archive'")
    options = body.model_dump()
    idempotency = None
    if idempotency_key is not None:
        archive_digest = raw_files_digest([("archive", archive)]) if archive is not None else None
        request_print = fingerprint([options, archive_digest])
        idempotency = IdempotencyKey("start_job", idempotency_key, request_print)
    try:
        job = await run_in_threadpool(services.jobs.start, options, archive, idempotency)
    except Replayed as replay:
        try:
            job = await run_in_threadpool(services.jobs.get, replay.result["job_id"])
        except NotFound as exc:
            raise Conflict(
                "the job this Idempotency-Key started has been deleted; use a new key"
            ) from exc
    return Job.model_validate(job)


@router.get("", response_model=JobList, summary="List training jobs")
async def list_jobs(services: ServicesDep) -> JobList:
    jobs = await run_in_threadpool(services.jobs.list)
    return JobList(jobs=[Job.model_validate(j) for j in jobs])


@router.get("/{job_id}", response_model=Job, summary="A training job", responses=errors(404))
async def get_job(job_id: str, services: ServicesDep) -> Job:
    return Job.model_validate(await run_in_threadpool(services.jobs.get, job_id))


@router.delete(
    "/{job_id}",
    response_model=Job,
    summary="Cancel a training job if it runs, and forget it",
    description="Stops a running job's worker (the answer then says 'cancelled') and removes"
    " the job from the list; a model it produced stays a model version.",
    responses=errors(404),
)
async def cancel_job(job_id: str, services: ServicesDep) -> Job:
    return Job.model_validate(await run_in_threadpool(services.jobs.delete, job_id))
