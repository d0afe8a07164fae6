"""Reading uploaded images, from multipart files or base64 in JSON: their bytes and
display-safe file names."""

from __future__ import annotations

import base64
import binascii
import unicodedata
from collections.abc import Sequence

from starlette.datastructures import FormData, UploadFile

from app.api.bodies import validation_error
from app.api.schemas import ImageData
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


async def form_files(form: FormData, field: str) -> list[tuple[str, bytes]]:
    """The display names and bytes of the files in a multipart ``field``."""
    files = form.getlist(field)
    if not all(isinstance(f, UploadFile) for f in files):
        raise BadRequest(f"the {field!r} field must hold files, not text")
    return await read_files([f for f in files if isinstance(f, UploadFile)])


def json_files(
    images: Sequence[ImageData], max_files: int, location: tuple[str | int, ...]
) -> list[tuple[str, bytes]]:
    """The display names and bytes of base64 images from a JSON body (``location`` names
    their list in a 422). Line breaks in the base64 text are allowed, other characters not."""
    if len(images) > max_files:
        raise validation_error(location, f"at most {max_files} images in one request")
    files = []
    for number, image in enumerate(images):
        text = image.data
        if text.startswith("data:"):
            header, comma, text = text.partition(",")
            if not comma or not header.endswith(";base64"):
                raise validation_error(
                    (*location, number, "data"), "a data URL must be 'data:<type>;base64,...'"
                )
        try:
            try:
                data = base64.b64decode(text, validate=True)
            except binascii.Error:
                data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise validation_error((*location, number, "data"), "not valid base64") from None
        if not data:
            raise validation_error((*location, number, "data"), "the image is empty")
        files.append((display_name(image.filename or f"image-{number}"), data))
    return files
