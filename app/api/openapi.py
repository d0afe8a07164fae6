"""The OpenAPI document: what FastAPI derives from the routes, plus what it cannot see.

FastAPI documents the bodies it validates itself. The rest is added here, from the same
pydantic models and settings the routes use: the bodies that routes parse themselves (JSON
or multipart), the media types of uploaded files, limits that are settings or depend on the
active model (files per request, ``k`` for clustering, the vector length), the links from a
created resource to the operations on it, and the API key when one is configured."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from app.api.schemas import (
    BatchSearchQuery,
    EmbedJson,
    ItemsJson,
    SearchQuery,
    TrainRequest,
)
from app.settings import Settings

# BMP, AVIF and HEIC are accepted too; they are left out here because generated clients and
# test tools cannot produce them from a media type
IMAGE_TYPES = "image/jpeg, image/png, image/webp, image/gif"
IMAGE_UPLOADS = {  # path -> the multipart fields of image files, of every such operation
    "/embed": ("files",),
    "/items": ("files",),
    "/search": ("file", "files"),
}
# (operation, status) -> {link name: (target operation, parameter, runtime expression)}
LINKS = {
    ("add_items", "201"): {
        "GetItem": ("get_item", "item_id", "$response.body#/items/0/id"),
        "GetItemImage": ("get_item_image", "item_id", "$response.body#/items/0/id"),
        "DeleteItem": ("delete_item", "item_id", "$response.body#/items/0/id"),
    },
    ("start_job", "202"): {
        "GetJob": ("get_job", "job_id", "$response.body#/job_id"),
        "CancelJob": ("cancel_job", "job_id", "$response.body#/job_id"),
    },
    ("list_models", "200"): {
        "Activate": ("activate", "version", "$response.body#/models/0/version"),
    },
}


def build_openapi(
    app: FastAPI, settings: Settings, dim: int | None, public_paths: frozenset[str]
) -> dict[str, Any]:
    """The document for this app and settings; ``dim`` is the active model's vector length
    (None before start-up, as for ``triplet-embed openapi``)."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    add_body_schemas(document, (SearchQuery, BatchSearchQuery, EmbedJson, ItemsJson, TrainRequest))
    describe_uploads(document, settings.max_files)
    describe_limits(document, settings.max_k, settings.max_files, dim)
    add_links(document)
    if settings.api_key is not None:
        add_api_key_security(document, public_paths)
    return document


def add_body_schemas(document: dict[str, Any], models: tuple[type[BaseModel], ...]) -> None:
    """Adds the models that routes reference from ``openapi_extra`` to the components
    (FastAPI only adds the models it validates itself)."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema


def _multipart(document: dict[str, Any], path: str) -> dict[str, Any]:
    return document["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return document["components"]["schemas"][name]  # type: ignore[no-any-return]
    return schema


def describe_uploads(document: dict[str, Any], max_files: int) -> None:
    """Image fields take non-empty files of the accepted image types; file lists hold 1 to
    ``max_files`` of them; a training archive is a zip."""
    for path, fields in IMAGE_UPLOADS.items():
        body = _multipart(document, path)
        properties = _resolve(document, body["schema"])["properties"]
        body["encoding"] = {
            name: {"contentType": IMAGE_TYPES if name in fields else "text/plain"}
            for name in sorted(properties)
        }
        for field in fields:
            prop = properties[field]
            if prop.get("type") == "array":
                prop.update(minItems=1, maxItems=max_files)
                prop["items"]["minLength"] = 1
            else:
                prop["minLength"] = 1
    _multipart(document, "/train")["encoding"] = {"archive": {"contentType": "application/zip"}}
    _multipart(document, "/imports")["encoding"] = {
        "archive": {"contentType": "application/zip"},
        "metadata": {"contentType": "application/json"},
    }
    imports = _resolve(document, _multipart(document, "/imports")["schema"])["properties"]
    imports["archive"] = {**imports["archive"], "type": "string", "format": "binary"}
    imports["archive"].pop("contentMediaType", None)
    imports["metadata"] = {
        "type": "object",
        "description": "a JSON object stored with every imported item",
    }
    items = _multipart(document, "/items")
    items["encoding"]["metadata"] = {"contentType": "application/json"}
    _resolve(document, items["schema"])["properties"]["metadata"] = {
        "type": "object",
        "description": "a JSON object for every file (or a JSON list of objects, one per file)",
    }


def describe_limits(document: dict[str, Any], max_k: int, max_files: int, dim: int | None) -> None:
    """Limits that are settings (``EMBED_MAX_K``, ``EMBED_MAX_FILES``) or the active model's
    (the vector length)."""
    schemas = document["components"]["schemas"]
    k_choices = schemas["ClusterRequest"]["properties"]["k"]["anyOf"]
    next(c for c in k_choices if c.get("type") == "integer")["maximum"] = max_k
    for name in ("EmbedJson", "ItemsJson"):
        schemas[name]["properties"]["images"]["maxItems"] = max_files
    if dim is not None:
        for name in ("SearchQuery", "SearchTarget"):
            vector = schemas[name]["properties"]["vector"]
            vector.update(minItems=dim, maxItems=dim)
            vector["description"] = f"a query vector of the active model's {dim} values"


def add_links(document: dict[str, Any]) -> None:
    """OpenAPI links from an operation's answer to the operations on what it created, so that
    clients and stateful testing can follow them."""
    operations = {
        operation["operationId"]: operation
        for methods in document["paths"].values()
        for operation in methods.values()
    }
    for (source, status), links in LINKS.items():
        response = operations[source]["responses"][status]
        response["links"] = {
            name: {"operationId": target, "parameters": {parameter: expression}}
            for name, (target, parameter, expression) in links.items()
        }


def add_api_key_security(document: dict[str, Any], public_paths: frozenset[str]) -> None:
    """Declares the API key (``X-API-Key`` or a bearer token) on every operation outside
    ``public_paths``: ``ApiKeyAuth`` checks it in middleware, where FastAPI cannot see it."""
    document.setdefault("components", {})["securitySchemes"] = {
        "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        "Bearer": {"type": "http", "scheme": "bearer"},
    }
    for path, operations in document.get("paths", {}).items():
        if path not in public_paths:
            for operation in operations.values():
                operation["security"] = [{"ApiKey": []}, {"Bearer": []}]
