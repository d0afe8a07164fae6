"""Request bodies that routes parse themselves (those accepting JSON or multipart)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from app.errors import BadRequest
from app.services.catalog import MAX_METADATA_BYTES

Model = TypeVar("Model", bound=BaseModel)


def validate(model: type[Model], data: Any) -> Model:
    """Validates like a declared body would: errors become the usual 422, located under
    ``body`` and without pydantic's documentation links, as FastAPI writes its own."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from exc


class _NotJSON(ValueError):
    """``NaN``, ``Infinity`` or ``-Infinity``, met by the parser (which does not say where)."""


def _refuse_constant(constant: str) -> NoReturn:
    raise _NotJSON(constant)


# A JSON string, or one of the constants outside strings: the first constant this finds in
# a document that parsed up to a constant is the one the parser met.
_STRING_OR_CONSTANT = re.compile(r'"(?:[^"\\]|\\.)*"|(-?Infinity|NaN)')


# Deeper JSON than any request of this API needs. Nesting is refused when it is read: the
# parser itself gives up only near 1,000 levels, and a stored value nested past about 250
# (metadata) could no longer be written into any answer.
MAX_JSON_DEPTH = 32


def strict_json(raw: str | bytes) -> Any:
    """Parses JSON as RFC 8259 defines it, nested at most :data:`MAX_JSON_DEPTH` levels.
    Python's parser also reads ``NaN`` and ``Infinity``, which no JSON answer can carry
    back: stored, they would break every later listing, and a 422 that quotes them could
    not be written. The error gives the constant's position, as for any other JSON error."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except _NotJSON as exc:
        text = _text(raw)
        found = (m for m in _STRING_OR_CONSTANT.finditer(text) if m.group(1))
        position = next(found).start(1)
        raise json.JSONDecodeError(f"{exc} is not a JSON value", text, position) from None
    except RecursionError:  # nested far too deeply for the parser
        raise _too_deep(raw) from None
    if nested_deeper_than(value, MAX_JSON_DEPTH):
        raise _too_deep(raw)
    return value


def _text(raw: str | bytes) -> str:
    return raw if isinstance(raw, str) else raw.decode(json.detect_encoding(raw), "replace")


def _too_deep(raw: str | bytes) -> json.JSONDecodeError:
    return json.JSONDecodeError(f"nested more than {MAX_JSON_DEPTH} levels", _text(raw), 0)


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects in ``value`` nest more than ``limit`` levels (a list of
    numbers is one level), found without recursion."""
    pending = [(value, 1)] if isinstance(value, (dict, list)) else []
    while pending:
        node, depth = pending.pop()
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)):
                if depth == limit:
                    return True
                pending.append((child, depth + 1))
    return False


class StrictJSONRequest(Request):
    """A request whose JSON body is parsed strictly, in a worker thread (bodies with base64
    images run to megabytes). FastAPI answers a ``JSONDecodeError`` from here with its usual
    422, for the bodies it parses itself as for those the routes read."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = await run_in_threadpool(strict_json, await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """The ``route_class`` of every router: its handlers see a :class:`StrictJSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler


def json_text(raw: str, location: tuple[str | int, ...]) -> Any:
    """A form field or query parameter that holds JSON text; bad JSON is a 422 there."""
    try:
        return strict_json(raw)
    except json.JSONDecodeError as exc:
        raise validation_error(location, f"not valid JSON: {exc.msg}") from exc


def validation_error(location: tuple[str | int, ...], message: str) -> RequestValidationError:
    """A 422 like FastAPI's own, for a limit only known at run time (a setting, the active
    model's dimension) that the OpenAPI document states as well."""
    return RequestValidationError(
        [{"type": "value_error", "loc": location, "msg": message, "input": None}]
    )


async def json_object(request: Request) -> dict[str, Any]:
    """The JSON object of the request body (strict JSON, as the routes' requests are
    :class:`StrictJSONRequest`)."""
    try:
        body = await request.json() if await request.body() else None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc.msg}") from exc
    except ValueError as exc:
        raise BadRequest("request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


IMAGE_FILES = {
    "type": "array",
    "items": {"type": "string", "format": "binary"},
    "description": "one or more images",
}


def multipart_or_json(
    form_fields: dict[str, Any], json_schema: dict[str, Any], **form_schema: Any
) -> dict[str, Any]:
    """``openapi_extra`` for a route that parses its own body: a multipart form with these
    fields (and nothing else), or JSON of this schema."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": form_fields,
                        "additionalProperties": False,
                        **form_schema,
                    }
                },
                "application/json": {"schema": json_schema},
            },
        }
    }


def form_properties(model: type[BaseModel]) -> dict[str, Any]:
    """The model's fields as multipart form fields in JSON Schema: a form field is present or
    absent, never null, so optional fields lose their null branch; and a list is a field
    given once or repeated, so one value is as valid as an array of them."""
    properties: dict[str, Any] = model.model_json_schema()["properties"]
    for name, schema in properties.items():
        choices = [c for c in schema.get("anyOf", []) if c.get("type") != "null"]
        if len(choices) == 1:
            rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
            properties[name] = {**choices[0], **rest}
        if properties[name].get("type") == "array":
            array = properties[name]
            rest = {k: v for k, v in array.items() if k in ("title", "description")}
            one_of = {k: v for k, v in array.items() if k not in rest}
            properties[name] = {"anyOf": [one_of, array["items"]], **rest}
    return properties


def single_fields(
    form: FormData, allowed: set[str], repeatable: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The form's fields by name, all of them ``allowed`` and each given at most once
    unless ``repeatable`` (those are left out: read them with ``form.getlist``)."""
    names = [name for name, _ in form.multi_items()]
    repeated = sorted({name for name in names if names.count(name) > 1} - repeatable)
    if repeated:
        raise BadRequest(f"form fields given more than once: {repeated[:5]}")
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise BadRequest(f"unknown form fields: {unknown[:5]}")
    return {name: value for name, value in form.multi_items() if name not in repeatable}


def metadata_objects(raw: str | None, count: int) -> list[dict[str, Any]]:
    """A JSON object for every file, or a JSON list of objects, one per file."""
    if raw is None or raw == "":
        return [{}] * count
    if len(raw.encode()) > MAX_METADATA_BYTES:
        raise BadRequest(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    try:
        value = strict_json(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"metadata is not valid JSON: {exc.msg}") from exc
    if isinstance(value, dict):
        return [value] * count
    if isinstance(value, list) and len(value) == count and all(isinstance(v, dict) for v in value):
        return value
    raise BadRequest("metadata must be a JSON object, or a list of objects, one per file")
