"""Dependencies: the services built in the lifespan, and API-key authentication."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from app.container import Services


def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the service is starting")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def require_api_key(request: Request) -> None:
    """With ``EMBED_API_KEY`` set, requires ``Authorization: Bearer <key>`` or
    ``X-API-Key: <key>``; the comparison takes constant time."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    supplied = request.headers.get("x-api-key")
    authorization = request.headers.get("authorization", "")
    if supplied is None and authorization.lower().startswith("bearer "):
        supplied = authorization[7:].strip()
    if not supplied:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(supplied.encode(), expected.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid API key")
