import asyncio
import tempfile
from pathlib import Path
from typing import Any

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


def run_asgi(app: Any, scope: dict[str, Any], body: bytes) -> tuple[int, int]:
    """Sends one request straight to the ASGI app; returns the status and how many times the
    app asked for body bytes."""
    asked = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    asyncio.run(app(scope, receive, send))
    return status, asked


@pytest.mark.parametrize("path", ["/items", "/embed", "/search", "/train"])
def test_unauthenticated_upload_is_refused_before_its_body_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where uploads would be spooled
    app = create_app(make_settings(tmp_path / "data", api_key="s3cret"))
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    body = head + b"\0" * (30 * 1024 * 1024) + f"\r\n--{boundary}--\r\n".encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    assert run_asgi(app, scope, body) == (401, 0)
    assert list(spool.iterdir()) == []
    scope["headers"] = [*scope["headers"], (b"x-api-key", b"wrong")]
    assert run_asgi(app, scope, body) == (403, 0)


def test_the_openapi_document_declares_the_key_where_it_is_required(secured: TestClient) -> None:
    document = secured.get("/openapi.json").json()
    assert set(document["components"]["securitySchemes"]) == {"ApiKey", "Bearer"}
    assert document["paths"]["/items"]["post"]["security"] == [{"ApiKey": []}, {"Bearer": []}]
    assert "security" not in document["paths"]["/healthz"]["get"]
