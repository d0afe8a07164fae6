"""The browser page: search by image, see neighbours and clusters."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(tags=["ui"])

PAGE = Path(__file__).resolve().parent.parent.parent / "ui" / "index.html"


@router.get("/ui", summary="Web page for searching and clustering", response_class=FileResponse)
def page() -> FileResponse:
    return FileResponse(PAGE, media_type="text/html")
