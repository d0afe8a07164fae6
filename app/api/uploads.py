"""Reading multipart uploads: their bytes and display-safe file names."""

from __future__ import annotations

import unicodedata

from fastapi import UploadFile

from app.errors import BadRequest


def display_name(filename: str | None) -> str:
    """The client's file name, kept only for display: the last path part, printable
    characters, at most 255 of them. It is never used as a path on the server."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    return name[:255] or "upload"


async def read_files(files: list[UploadFile]) -> list[tuple[str, bytes]]:
    """The uploads' display names and bytes. (Their count is bounded by the app's
    ``form_limits``, from ``EMBED_MAX_FILES``.)"""
    if not files:
        raise BadRequest("no files uploaded")
    return [(display_name(f.filename), await f.read()) for f in files]
