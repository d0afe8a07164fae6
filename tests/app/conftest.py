"""API test fixtures: the real app, with its lifespan, over a fresh data directory."""

from __future__ import annotations

import io
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.conftest import CIFAR, DEFAULT_MODEL

# Every API test runs against both stores: the embedded one (SQLite + FAISS) and PostgreSQL
# with pgvector. Not parametrised here: modules whose tests do not touch the store (or test
# one store's own code: test_postgres_store), and test_filters, whose module-scoped data set
# is parametrised over STORES itself.
STORES = ("sqlite", "postgres")
NOT_PARAMETRISED = frozenset(
    {
        "test_batching",
        "test_deps",
        "test_index",
        "test_training_worker",
        "test_filters",
        "test_postgres_store",
        "test_settings",
    }
)
_database_url: dict[str, str | None] = {"current": None}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if "store" in metafunc.fixturenames and module not in NOT_PARAMETRISED:
        metafunc.parametrize("store", STORES, indirect=True)


@pytest.fixture(autouse=True)
def store(request: pytest.FixtureRequest) -> Iterator[str]:
    """The store this test's apps use: ``make_settings`` points them at a fresh PostgreSQL
    database for ``postgres``."""
    kind: str = getattr(request, "param", "sqlite")
    url = request.getfixturevalue("postgres_url") if kind == "postgres" else None
    _database_url["current"] = url
    yield kind
    _database_url["current"] = None


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for an in-process app, on the test's store. It keeps the test process's
    thread count, which start-up would otherwise lower to one under OpenVINO, slowing every
    later test."""
    overrides.setdefault("torch_threads", torch.get_num_threads())
    overrides.setdefault("database_url", _database_url["current"])
    return Settings(data_dir=data_dir, model_dir=DEFAULT_MODEL, **overrides)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path / "data"))) as test_client:
        yield test_client


def cifar_upload(label: str, start: int, count: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    """``count`` real CIFAR-10 images of ``label`` as multipart ``files`` fields."""
    paths = sorted((CIFAR / label).iterdir())[start : start + count]
    return [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def add(client: TestClient, label: str, start: int, count: int) -> list[int]:
    response = client.post(
        "/items", files=cifar_upload(label, start, count), data={"labels": label}
    )
    assert response.status_code == 201, response.text
    return [item["id"] for item in response.json()["items"]]


def item_count(client: TestClient) -> int:
    return int(client.get("/items", params={"limit": 1}).json()["total"])


def zipped(entries: dict[str, bytes], link: str | None = None) -> bytes:
    """A zip archive of ``entries`` (name: bytes), and a symbolic link named ``link``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()
