"""Dependencies: the services built in the lifespan. (The API key is checked earlier, by
``app.api.middleware.ApiKeyAuth``, before any body is read.)"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from app.container import Services


def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the service is starting")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
