"""The routes' dependencies run on the event loop: FastAPI would hand each plain ``def``
dependency to a worker thread, a cost on every request (single-image ``/embed`` served 12 %
fewer requests a second with ``get_services`` as a plain function)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from app.main import create_app


def api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """The app's routes, also inside the included routers (FastAPI wraps those)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (router := getattr(route, "original_router", None)) is not None:
            yield from api_routes(router.routes)


def dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for sub in dependant.dependencies:
        yield sub
        yield from dependencies(sub)


def test_every_dependency_is_a_coroutine_function() -> None:
    routes = list(api_routes(create_app().routes))
    found = {
        f"{route.path} {dep.call.__name__}": inspect.iscoroutinefunction(dep.call)
        for route in routes
        for dep in dependencies(route.dependant)
        if dep.call is not None
    }
    assert any(name.startswith("/embed get_services") for name in found)
    assert [name for name, is_async in found.items() if not is_async] == []
