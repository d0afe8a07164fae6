"""Schemathesis against the service's own OpenAPI schema, on a real server process:
no generated request may get a 5xx or a response that breaks the schema."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

from bench.common import free_port
from tests.conftest import CIFAR, start_test_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    tmp = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    process = start_test_server(tmp / "data", port, tmp / "server.log")
    base = f"http://127.0.0.1:{port}"
    import httpx2 as httpx

    with httpx.Client(base_url=base, timeout=30) as client:  # a few items to find and cluster
        for label in ("cat", "bird"):
            paths = sorted((CIFAR / label).iterdir())[:3]
            files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
            assert client.post("/items", files=files, data={"labels": label}).status_code == 201
    try:
        yield schemathesis.openapi.from_url(f"{base}/openapi.json")
    finally:
        process.terminate()
        process.wait(timeout=60)


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
