"""The ``Idempotency-Key`` header: a caller's name for one write, so that a retry of a
request whose answer was lost (a timeout, a dropped connection, a crash) does not write
twice. The key and a fingerprint of the request are stored with the write, in the same
transaction; a retry with the same key and the same request gets the first answer, and the
same key with a different request is 409. Keys are kept for 24 hours."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Header

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description=(
            "your name for this write (1-255 printable ASCII characters, no spaces): a retry "
            "with the same key and request returns the first answer without writing again; "
            "the same key with another request is 409. Kept for 24 hours."
        ),
    ),
]


def raw_files_digest(files: Sequence[tuple[str, bytes]]) -> list[list[str]]:
    """The uploads as (file name, SHA-256 of the bytes): what a fingerprint needs of them."""
    return [[name, hashlib.sha256(data).hexdigest()] for name, data in files]


def fingerprint(request: Any) -> str:
    """A digest of a request's meaning (JSON-encodable parts), independent of its encoding
    (a multipart boundary, field order within one value)."""
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
