"""The active model, model versions and activation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from starlette.concurrency import run_in_threadpool

from app.api.bodies import StrictJSONRoute
from app.api.deps import ServicesDep
from app.api.idempotency import IdempotencyKeyHeader, fingerprint
from app.api.responses import errors
from app.api.schemas import (
    Activation,
    ActivationProgress,
    ModelInfo,
    ModelVersion,
    ModelVersionList,
)
from app.container import Services
from app.errors import Replayed
from app.store.database import IdempotencyKey

router = APIRouter(tags=["models"], route_class=StrictJSONRoute)
ACTIVATION = {"$ref": "#/components/schemas/Activation"}


@router.get("/model", response_model=ModelInfo, summary="The active model and its metrics")
def active_model(services: ServicesDep) -> ModelInfo:
    snapshot = services.runtime.snapshot
    config = snapshot.card.config
    int8 = snapshot.embedder.int8
    return ModelInfo(
        version=snapshot.version,
        backbone=config.backbone,
        model_type=config.model_type,
        embedding_dim=config.embedding_dim,
        input_size=config.input_size,
        stem=config.stem,
        labels=list(config.labels),
        trained_at=snapshot.card.trained_at,
        backend=snapshot.embedder.backend,
        backend_selection=snapshot.embedder.selection.to_dict(),
        flip_tta=snapshot.embedder.flip_tta,
        int8=int8.summary() if int8 is not None else None,
        metrics=snapshot.card.metrics,
    )


@router.get("/models", response_model=ModelVersionList, summary="All model versions")
def list_models(services: ServicesDep) -> ModelVersionList:
    return ModelVersionList(
        models=[ModelVersion(**m) for m in services.models.versions()],
        activating=services.models.activating,
        activation_progress=(
            ActivationProgress(**services.models.progress) if services.models.activating else None
        ),
        last_activation=services.models.last_activation,
        unreadable_at_start=services.models.unreadable_at_start,
    )


@router.post(
    "/models/{version}/activate",
    response_model=Activation,
    summary="Activate a model version (re-embeds every item, then swaps)",
    responses={
        202: {
            "description": "activation started in the background",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Activation"}}
            },
        },
        **errors(404, 409, 422, 503),
    },
)
async def activate(
    version: str,
    services: ServicesDep,
    response: Response,
    wait: Annotated[bool, Query(description="answer only when the new model is active")] = False,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Activation:
    """With an `Idempotency-Key` used before for the same request, the first answer comes
    back (say 202 while that activation still runs, where a new request would get 409)."""
    idempotency = None
    if idempotency_key is not None:
        idempotency = IdempotencyKey("activate", idempotency_key, fingerprint([version, wait]))
    try:
        await run_in_threadpool(services.models.replay_if_done, idempotency)
    except Replayed as replay:
        response.status_code = replay.result["status_code"]
        return Activation(**replay.result["answer"])
    activation = await _activate(version, wait, services)
    response.status_code = status.HTTP_200_OK if activation.status == "active" else 202
    answer = {"status_code": response.status_code, "answer": activation.model_dump()}
    await run_in_threadpool(services.models.remember_answer, idempotency, answer)
    return activation


async def _activate(version: str, wait: bool, services: Services) -> Activation:
    if services.runtime.snapshot.version == version:
        return Activation(version=version, status="active")
    if wait:
        result = await run_in_threadpool(services.models.activate, version)
        return Activation(**result)
    await run_in_threadpool(services.models.start_activation, version)
    return Activation(version=version, status="activating")
