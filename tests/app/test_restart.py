from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import add, cifar_upload, make_settings


def search_ids(client: TestClient) -> list[int]:
    query = cifar_upload("cat", 200, 1)[0][1]
    body = client.post("/search", files={"file": query}, data={"k": "6"}).json()
    return [n["id"] for n in body["neighbors"]]


def test_items_model_and_index_survive_a_restart(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as client:
        add(client, "cat", 0, 4)
        add(client, "bird", 0, 4)
        client.delete("/items/2")
        before = search_ids(client)
        version = client.get("/model").json()["version"]
    index_files = list((tmp_path / "index").glob("*.faiss"))
    assert len(index_files) == 1
    with TestClient(create_app(make_settings(tmp_path))) as client:
        assert client.get("/items").json()["total"] == 7
        assert client.get("/model").json()["version"] == version
        assert search_ids(client) == before


def test_damaged_index_is_rebuilt_from_the_database(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as client:
        add(client, "cat", 0, 5)
        before = search_ids(client)
    for path in (tmp_path / "index").glob("*.faiss"):
        path.write_bytes(b"garbage")
    with TestClient(create_app(make_settings(tmp_path))) as client:
        assert search_ids(client) == before


def test_stale_index_is_rebuilt(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as client:
        add(client, "cat", 0, 3)
    saved = {p.name: p.read_bytes() for p in (tmp_path / "index").iterdir()}
    with TestClient(create_app(make_settings(tmp_path))) as client:
        add(client, "bird", 0, 3)
    for name, data in saved.items():  # put back the copy from before the birds
        (tmp_path / "index" / name).write_bytes(data)
    with TestClient(create_app(make_settings(tmp_path))) as client:
        assert len(search_ids(client)) == 6
