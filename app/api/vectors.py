"""Vectors as NumPy ``.npy`` bytes: the binary answer to ``Accept: application/x-npy``.

A 32-image ``/embed`` answer is 4,096 floats. As JSON that is about 90 kB of decimal text
that the server formats and the caller parses back; as ``.npy`` it is 16 kB of float32 the
caller maps straight into an array (``numpy.load(..., allow_pickle=False)``), with shape and
dtype in its header.
"""

from __future__ import annotations

import io

import numpy as np
from fastapi import Response

NPY_MEDIA_TYPE = "application/x-npy"
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
