"""The error responses each route declares in the OpenAPI document, from one catalogue.

Every route lists the statuses it can answer besides success with ``errors(...)``; the
descriptions live here, so the document and ``app.errors`` speak one language. Every error
body is ``{"detail": ...}``: a string, or FastAPI's list for 422."""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}
VALIDATION_SCHEMA = {"$ref": "#/components/schemas/HTTPValidationError"}

DESCRIPTIONS = {
    400: "malformed request: a corrupt image, bad form fields or an unreadable body",
    403: "not allowed here (e.g. a training folder outside EMBED_TRAIN_ROOTS)",
    404: "unknown id",
    408: "the request body arrived too slowly",
    409: "conflicts with the current state (no items yet, a job or activation running, ...)",
    413: "request body or image too large",
    415: "not an image, or a format outside JPEG/PNG/WebP/BMP/GIF/AVIF/HEIC",
    422: "the request does not match its schema",
    503: "starting up, shutting down, or too many uploads at once (see Retry-After)",
}
BODY_ERRORS = (400, 408, 413, 422, 503)  # any route that reads a request body
UPLOAD_ERRORS = (*BODY_ERRORS, 415)  # and decodes images from it


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses."""
    return {
        code: {
            "description": DESCRIPTIONS[code],
            "content": {
                "application/json": {"schema": VALIDATION_SCHEMA if code == 422 else ERROR_SCHEMA}
            },
        }
        for code in sorted(set(codes))
    }
