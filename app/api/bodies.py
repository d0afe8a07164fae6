"""Request bodies that routes parse themselves (those accepting JSON or multipart), and the
parts of the OpenAPI document that FastAPI cannot derive from the routes."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from app.errors import BadRequest

Model = TypeVar("Model", bound=BaseModel)


def validate(model: type[Model], data: Any) -> Model:
    """Validates like a declared body would: errors become the usual 422."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


async def json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest("request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def add_body_schemas(openapi: dict[str, Any], models: tuple[type[BaseModel], ...]) -> None:
    """Adds to the OpenAPI components the models that routes reference from ``openapi_extra``
    (FastAPI only adds the models it validates itself)."""
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema


def add_api_key_security(openapi: dict[str, Any], public_paths: frozenset[str]) -> None:
    """Declares the API key (``X-API-Key`` or a bearer token) on every operation outside
    ``public_paths``: ``ApiKeyAuth`` checks it in middleware, where FastAPI cannot see it."""
    openapi.setdefault("components", {})["securitySchemes"] = {
        "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        "Bearer": {"type": "http", "scheme": "bearer"},
    }
    for path, operations in openapi.get("paths", {}).items():
        if path not in public_paths:
            for operation in operations.values():
                operation["security"] = [{"ApiKey": []}, {"Bearer": []}]
