"""Dependencies: the services built in the lifespan. (The API key is checked earlier, by
``app.api.middleware.ApiKeyAuth``, before any body is read.)"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from app.container import Services


async def get_services(request: Request) -> Services:
    """``async`` although it does not wait: FastAPI runs a plain ``def`` dependency in a
    worker thread, a hand-off that cost more per request than the rest of its work."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the service is starting")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
