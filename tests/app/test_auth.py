from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import make_settings

PROTECTED = [
    ("get", "/model"),
    ("get", "/models"),
    ("get", "/metrics"),
    ("get", "/items"),
    ("get", "/items/1"),
    ("post", "/search"),
    ("post", "/cluster"),
    ("post", "/embed"),
    ("get", "/train"),
    ("post", "/models/x/activate"),
]


@pytest.fixture
def secured(tmp_path: Path):  # type: ignore[no-untyped-def]
    with TestClient(create_app(make_settings(tmp_path, api_key="s3cret"))) as client:
        yield client


def test_health_needs_no_key(secured: TestClient) -> None:
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/readyz").status_code == 200


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_missing_and_wrong_keys_are_refused(secured: TestClient, method: str, path: str) -> None:
    assert getattr(secured, method)(path).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert getattr(secured, method)(path, headers=wrong).status_code == 403
    assert getattr(secured, method)(path, headers={"X-API-Key": "s3cre"}).status_code == 403


def test_right_key_in_either_header_is_accepted(secured: TestClient) -> None:
    assert secured.get("/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert secured.get("/model", headers={"X-API-Key": "s3cret"}).status_code == 200
