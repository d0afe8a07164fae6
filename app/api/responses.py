"""Error responses shared by several routes, for the OpenAPI schema."""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}


UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("corrupt image, too many files or bad form fields"),
    413: _error("request body or image too large"),
    415: _error("not an image, or a format outside JPEG/PNG/WebP/BMP/GIF"),
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _error("unknown id")}
CONFLICT: dict[int | str, dict[str, Any]] = {409: _error("conflicting state")}
