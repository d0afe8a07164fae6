"""Schemathesis against the service's own OpenAPI schema, on a real server process:
no generated request may get a 5xx or a response that breaks the schema."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

from tests.conftest import CIFAR
from tests.server import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def fuzz_schema(server_process: Callable[..., ServerProcess]) -> schemathesis.BaseSchema:
    server = server_process()
    with server.client(timeout=30) as client:  # a few items to find and cluster
        for label in ("cat", "bird"):
            paths = sorted((CIFAR / label).iterdir())[:3]
            files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
            assert client.post("/items", files=files, data={"labels": label}).status_code == 201
    return schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")


def test_no_server_errors_and_schema_conformance(fuzz_schema: schemathesis.BaseSchema) -> None:
    """Each operation gets generated requests; schemathesis's pytest plugin is not used
    because it does not run under pytest 9."""
    checks = [not_a_server_error, response_schema_conformance, content_type_conformance]
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert len(operations) == 19
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=int(os.environ.get("FUZZ_EXAMPLES", "25")),
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=checks)

        run()
