"""Exact-match filters on items: their label, external id and metadata fields.

A filter maps fields to wanted values, e.g. ``{"label": "cat", "metadata.source": "cifar"}``;
an item matches when every field has one of its wanted values (a list is "any of"). Metadata
fields are paths into the item's JSON metadata (``metadata.camera.make``), and a value
matches only a JSON value of the same kind: ``"5"`` does not match ``5``, nor ``1`` ``true``.
Filters become SQL over the ``items`` table, so the database picks the matching ids before
any nearest-neighbour search, listing or clustering runs on them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Scalar = str | int | float | bool | None

# label, external_id, or metadata.<key>[.<key>...]: keys of letters, digits, '_' and '-'
FIELD_PATTERN = re.compile(r"^(label|external_id|metadata(\.[A-Za-z0-9_-]{1,64}){1,4})$")
MAX_FIELDS = 16
MAX_VALUES = 100  # wanted values of one field
COLUMNS = ("label", "external_id")


@dataclass(frozen=True)
class ItemFilter:
    """Conditions that all hold: ``(field, wanted values)`` pairs."""

    conditions: tuple[tuple[str, tuple[Scalar, ...]], ...] = ()

    @classmethod
    def parse(cls, raw: Mapping[str, Scalar | Sequence[Scalar]]) -> ItemFilter:
        """Raises ``ValueError`` naming the problem for an unknown field or a value that is
        not a JSON scalar (or a list of them)."""
        if len(raw) > MAX_FIELDS:
            raise ValueError(f"a filter has at most {MAX_FIELDS} fields")
        conditions = []
        for field, value in raw.items():
            if not FIELD_PATTERN.fullmatch(field):
                raise ValueError(
                    f"unknown filter field {field[:80]!r}: use 'label', 'external_id' or "
                    "'metadata.<key>' (keys of letters, digits, '_' and '-', up to 4 deep)"
                )
            values = tuple(value) if isinstance(value, list | tuple) else (value,)
            if not 1 <= len(values) <= MAX_VALUES:
                raise ValueError(f"filter field {field!r} needs 1 to {MAX_VALUES} values")
            for v in values:
                if not isinstance(v, str | int | float | bool | None):
                    raise ValueError(f"filter field {field!r}: values must be JSON scalars")
            conditions.append((field, values))
        return cls(tuple(conditions))

    @classmethod
    def combine(cls, label: str | None, filter_: ItemFilter | None) -> ItemFilter | None:
        """``filter_`` and, if given, a ``label`` parameter; None when neither restricts."""
        conditions = (filter_.conditions if filter_ else ()) + (
            (("label", (label,)),) if label is not None else ()
        )
        return cls(conditions) if conditions else None

    def where(self, dialect: Literal["sqlite", "postgres"] = "sqlite") -> tuple[str, list[Any]]:
        """An SQL condition on the ``items`` table and its parameters, for SQLite (``?``
        placeholders, metadata as JSON text) or PostgreSQL (``%s``, metadata as ``jsonb``)."""
        match = _match if dialect == "sqlite" else _match_postgres
        clauses, params = [], []
        for field, values in self.conditions:
            alternatives = []
            for value in values:
                sql, args = match(field, value)
                alternatives.append(sql)
                params.extend(args)
            clauses.append("(" + " OR ".join(alternatives) + ")")
        return " AND ".join(clauses) or ("1" if dialect == "sqlite" else "TRUE"), params


def _match(field: str, value: Scalar) -> tuple[str, list[Any]]:
    if field in COLUMNS:
        if value is None:
            return f"items.{field} IS NULL", []
        if isinstance(value, str):
            return f"items.{field} = ?", [value]
        return "0", []  # these columns hold text only
    path = "$" + "".join(f'."{key}"' for key in field.split(".")[1:])
    kind = "json_type(items.metadata, ?)"
    if value is None:
        return f"{kind} = 'null'", [path]
    if isinstance(value, bool):
        return f"{kind} = ?", [path, "true" if value else "false"]
    if isinstance(value, str):
        return f"({kind} = 'text' AND json_extract(items.metadata, ?) = ?)", [path, path, value]
    return (
        f"({kind} IN ('integer', 'real') AND json_extract(items.metadata, ?) = ?)",
        [path, path, value],
    )


def _match_postgres(field: str, value: Scalar) -> tuple[str, list[Any]]:
    """jsonb containment (which a GIN index serves) compares JSON values kind by kind, as
    the SQLite form does: ``{"a": "5"}`` does not contain ``{"a": 5}``, nor ``1`` ``true``."""
    if field in COLUMNS:
        if value is None:
            return f"items.{field} IS NULL", []
        if isinstance(value, str):
            return f"items.{field} = %s", [value]
        return "FALSE", []
    wanted: Any = value
    for key in reversed(field.split(".")[1:]):
        wanted = {key: wanted}
    return "items.metadata @> %s::jsonb", [json.dumps(wanted)]
