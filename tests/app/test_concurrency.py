"""Searches while items are added and deleted and while models are activated."""

import threading
from pathlib import Path

from fastapi.testclient import TestClient

from tests.app.conftest import add, cifar_upload
from tests.app.test_models import register_second_model


def test_searches_stay_consistent_during_writes_and_activation(
    client: TestClient, tmp_path: Path
) -> None:
    ids = add(client, "cat", 0, 20) + add(client, "bird", 0, 20)
    first = client.get("/model").json()["version"]
    second = register_second_model(client, tmp_path)  # 64-d: a mixed query would fail loudly
    stop = threading.Event()
    failures: list[str] = []
    versions: set[str] = set()
    query_image = cifar_upload("cat", 300, 1)[0][1]

    def searcher(n: int) -> None:
        while not stop.is_set():
            if n % 2:
                response = client.post("/search", json={"id": ids[n], "k": 10})
            else:
                response = client.post("/search", files={"file": query_image}, data={"k": "10"})
            if response.status_code != 200:
                failures.append(f"search {response.status_code}: {response.text}")
                continue
            body = response.json()
            versions.add(body["model_version"])
            if len(body["neighbors"]) != 10:
                failures.append(f"{len(body['neighbors'])} neighbours")

    def writer() -> None:
        start = 100
        while not stop.is_set():
            new = add(client, "bird", start, 2)
            start += 2
            if client.delete(f"/items/{new[0]}").status_code != 204:
                failures.append("delete failed")

    threads = [threading.Thread(target=searcher, args=(n,)) for n in range(1, 4)]
    threads.append(threading.Thread(target=writer))
    for thread in threads:
        thread.start()
    try:
        for version in (second, first, second):
            response = client.post(f"/models/{version}/activate", params={"wait": True})
            assert response.status_code == 200, response.text
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert failures == []
    assert versions == {first, second}
    services = client.app.state.services  # type: ignore[attr-defined]
    total = client.get("/items").json()["total"]
    assert len(services.runtime.snapshot.index) == total
    for item in client.get("/items", params={"limit": 1000}).json()["items"]:
        assert item["model_version"] == second
