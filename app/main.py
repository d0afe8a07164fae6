"""Builds the FastAPI app. ``create_app`` is the factory uvicorn runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.api.bodies import add_api_key_security, add_body_schemas
from app.api.middleware import ApiKeyAuth, RequestContext, UploadGuard
from app.api.routes import cluster, embed, health, items, models, search, train, ui
from app.api.schemas import SearchQuery, TrainRequest
from app.container import Services
from app.errors import ServiceError
from app.observability import Metrics
from app.settings import Settings

DESCRIPTION = """Embed images with a ResNet18 triplet network, store labelled items, find
nearest neighbours (FAISS), group them (k-means) and retrain on your own labels."""


# Open without the API key: probes, the static page (its API calls carry the key) and the docs.
PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/ui", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await run_in_threadpool(Services.build, settings, metrics)
        await run_in_threadpool(services.start)
        metrics.bind(
            index_size=lambda: (
                float(len(services.runtime.snapshot.index)) if services.runtime.ready else 0.0
            ),
            version=lambda: services.runtime.snapshot.version if services.runtime.ready else None,
            job_counts=lambda: _job_counts(services),
        )
        app.state.services = services
        try:
            yield
        finally:
            app.state.services = None
            await run_in_threadpool(services.stop)

    app = FastAPI(
        title="triplet-embed",
        version="1.0.0",
        summary="Image embedding and similarity service",
        description=DESCRIPTION,
        lifespan=lifespan,
        max_body_size=settings.max_upload_bytes,
        form_limits={"max_files": settings.max_files},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.services = None

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    for module in (health, ui, models, embed, items, search, cluster, train):
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            add_body_schemas(schema, (SearchQuery, TrainRequest))
            if settings.api_key is not None:
                add_api_key_security(schema, PUBLIC_PATHS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(
        UploadGuard,
        max_concurrent=settings.max_concurrent_uploads,
        total_timeout=settings.body_timeout_s,
        idle_timeout=settings.body_idle_timeout_s,
    )
    app.add_middleware(ApiKeyAuth, api_key=settings.api_key, public_paths=PUBLIC_PATHS)
    app.add_middleware(RequestContext, metrics=metrics)  # outermost: every answer is logged
    return app


def _job_counts(services: Services) -> dict[str, int]:
    counts = dict.fromkeys(("queued", "running", "succeeded", "failed", "cancelled"), 0)
    for job in services.db.jobs():
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    return counts
