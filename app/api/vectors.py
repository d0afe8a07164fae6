"""Vectors out: NumPy ``.npy`` bytes (the binary answer to ``Accept: application/x-npy``), and
the streamed export's two encodings, JSON lines and a ``.npy`` structured array.

A 32-image ``/embed`` answer is 4,096 floats. As JSON that is about 90 kB of decimal text
that the server formats and the caller parses back; as ``.npy`` it is 16 kB of float32 the
caller maps straight into an array (``numpy.load(..., allow_pickle=False)``), with shape and
dtype in its header.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np
from fastapi import Response

from app.services.catalog import EXTERNAL_ID_MAX, LABEL_MAX
from app.store.database import VectorPage

NPY_MEDIA_TYPE = "application/x-npy"
JSONL_MEDIA_TYPE = "application/x-ndjson"

JSON_COVERING = ("application/json", "application/*", "*/*")


def _ranges(accept: str) -> dict[str, float]:
    """Media ranges of an Accept header and their quality values (1 when not given)."""
    ranges: dict[str, float] = {}
    for entry in accept.split(","):
        media, *params = (part.strip() for part in entry.split(";"))
        if not media:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        ranges[media.lower()] = max(quality, ranges.get(media.lower(), 0.0))
    return ranges


def prefers_npy(accept: str | None) -> bool:
    """Whether the caller asked for ``.npy`` at least as much as for JSON (JSON is the
    default: without an Accept header, or with ``*/*``)."""
    if not accept:
        return False
    ranges = _ranges(accept)
    npy = ranges.get(NPY_MEDIA_TYPE, 0.0)
    json_quality = max((ranges.get(media, 0.0) for media in JSON_COVERING), default=0.0)
    return npy > 0 and npy >= json_quality


def npy_response(vectors: np.ndarray, headers: dict[str, str]) -> Response:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vectors, dtype="<f4"), allow_pickle=False)
    return Response(buffer.getvalue(), media_type=NPY_MEDIA_TYPE, headers=headers)


def export_dtype(dim: int) -> np.dtype:
    """One exported item: its id, its external id and label ("" for none) and its vector."""
    return np.dtype(
        [
            ("id", "<i8"),
            ("external_id", f"<U{EXTERNAL_ID_MAX}"),
            ("label", f"<U{LABEL_MAX}"),
            ("vector", "<f4", (dim,)),
        ]
    )


def npy_export(total: int, dim: int, pages: Iterator[VectorPage]) -> Iterator[bytes]:
    """A ``.npy`` file of ``total`` :func:`export_dtype` records, written page by page (the
    header states the count, so the database snapshot must hold exactly ``total``)."""
    dtype = export_dtype(dim)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header,
        {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (total,)},
    )
    yield header.getvalue()
    for ids, external_ids, labels, vectors in pages:
        records = np.empty(len(ids), dtype=dtype)
        records["id"], records["vector"] = ids, vectors
        records["external_id"] = [external_id or "" for external_id in external_ids]
        records["label"] = [label or "" for label in labels]
        yield records.tobytes()


def jsonl_export(pages: Iterator[VectorPage]) -> Iterator[bytes]:
    """One JSON object per line: ``{"id", "external_id", "label", "vector"}``."""
    for ids, external_ids, labels, vectors in pages:
        lines = (
            json.dumps({"id": int(i), "external_id": external, "label": label, "vector": vector})
            for i, external, label, vector in zip(
                ids, external_ids, labels, vectors.tolist(), strict=True
            )
        )
        yield ("\n".join(lines) + "\n").encode()
