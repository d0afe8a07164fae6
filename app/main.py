"""Builds the FastAPI app. ``create_app`` is the factory uvicorn runs."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.concurrency import run_in_threadpool

from app.api.middleware import ApiKeyAuth, RequestContext, UploadGuard
from app.api.openapi import build_openapi
from app.api.routes import (
    cluster,
    embed,
    health,
    imports,
    items,
    models,
    search,
    train,
    ui,
    vectors,
)
from app.container import Services
from app.errors import ServiceError
from app.observability import Metrics
from app.settings import Settings
from app.store.database import DatabaseUnavailable

DESCRIPTION = """Embed images with a ResNet18 triplet network, store labelled items, find
nearest neighbours (FAISS), group them (k-means) and retrain on your own labels."""


# Open without the API key: probes, the static page (its API calls carry the key) and the docs.
PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/ui", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)


GC_THRESHOLDS = (50_000, 20, 10)
"""The serving process's garbage collector: a young collection every 50,000 allocations
instead of 700, and a middle one every 20 of those. Each request allocates thousands of
short-lived objects that reference counting frees anyway, while every collection also walks
the survivors; side by side on the family-25 CPU, 16 single-image clients got 663 → 724
images/s and 4 clients sending 32 images 1,460 → 1,516. Full collections keep their
default rhythm (every 10 middle ones)."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gc.set_threshold(*GC_THRESHOLDS)
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
        generate_unique_id_function=lambda route: route.name,  # operationId: the handler's name
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.services = None

    @app.exception_handler(405)
    async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
        """Lists in ``Allow`` every method the path serves (Starlette names only those of the
        first route matching the path)."""
        allowed = sorted(
            method
            for route in iter_route_contexts(app.routes)
            if isinstance(route.original_route, APIRoute)
            and route.path_regex.match(request.url.path)
            for method in route.methods or ()
        )
        headers = {"Allow": ", ".join(allowed)}
        return JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers=headers)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(DatabaseUnavailable)
    async def database_unavailable(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        """The shared database is down: nothing was changed that was not committed, and the
        request may be sent again (with its ``Idempotency-Key``, a write happens once)."""
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    for module in (health, ui, models, embed, items, imports, search, cluster, train, vectors):
        app.include_router(module.router)

    documents: dict[int | None, dict[str, Any]] = {}  # by the active model's vector length

    def openapi() -> dict[str, Any]:
        services: Services | None = app.state.services
        dim = (
            services.runtime.snapshot.embedder.dim if services and services.runtime.ready else None
        )
        if dim not in documents:
            documents[dim] = build_openapi(app, settings, dim, PUBLIC_PATHS)
        return documents[dim]

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
