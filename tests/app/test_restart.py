from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import add, cifar_upload, make_settings


def search_ids(client: TestClient) -> list[int]:
    query = cifar_upload("cat", 200, 1)[0][1]
    body = client.post("/search", files={"file": query}, data={"k": "6"}).json()
    return [n["id"] for n in body["neighbors"]]


def test_items_model_and_index_survive_a_restart(tmp_path: Path, store: str) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as client:
        add(client, "cat", 0, 4)
        add(client, "bird", 0, 4)
        client.delete("/items/2")
        before = search_ids(client)
        version = client.get("/model").json()["version"]
    if store == "sqlite":  # the embedded store saves its FAISS index for a quick start
        assert len(list((tmp_path / "index").glob("*.faiss"))) == 1
    with TestClient(create_app(make_settings(tmp_path))) as client:
        assert client.get("/items").json()["total"] == 7
        assert client.get("/model").json()["version"] == version
        assert search_ids(client) == before


def test_a_failing_shutdown_step_still_stops_the_rest(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path / "data"))
    closed: list[bool] = []
    with pytest.raises(RuntimeError, match="lost"), TestClient(app):
        services = app.state.services

        def lose_the_database() -> None:
            raise RuntimeError("the database was lost")

        def close() -> None:
            closed.append(True)
            close_database()

        close_database = services.db.close
        services.imports.shutdown = lose_the_database
        services.db.close = close
    assert closed == [True]
