"""The browser page: the whole workflow for people who would rather look than call. Add
labelled images (drag and drop), browse and delete them, search by image, see the clusters,
train on the stored items with a live progress bar and loss/precision curve, and compare and
activate model versions. It is one static file that calls the HTTP API like any client."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.api.bodies import StrictJSONRoute

router = APIRouter(tags=["ui"], route_class=StrictJSONRoute)

PAGE = Path(__file__).resolve().parent.parent.parent / "ui" / "index.html"


@router.get(
    "/ui",
    summary="Web page: add, browse, search, cluster, train and activate",
    response_class=FileResponse,
)
def page() -> FileResponse:
    return FileResponse(PAGE, media_type="text/html")
