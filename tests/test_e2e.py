"""End to end: a real server process, spoken to over HTTP."""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import CIFAR
from tests.server import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def server(server_process: Callable[..., ServerProcess]) -> Iterator[httpx.Client]:
    with server_process().client() as client:
        yield client


@pytest.fixture
def new_install(server_process: Callable[..., ServerProcess]) -> Iterator[httpx.Client]:
    """A server on a fresh data folder that measures the backends, as a new install does."""
    with server_process(measure_backends=True).client() as client:
        yield client


def files(label: str, start: int, count: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    paths = sorted((CIFAR / label).iterdir())[start : start + count]
    return [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def test_store_search_cluster_train_and_activate(new_install: httpx.Client) -> None:
    server = new_install
    selection = server.get("/model").json()["backend_selection"]
    assert selection["how"] == "measured", selection
    assert selection["backend"] in selection["images_per_second"]

    for label in ("cat", "bird"):
        for start in range(0, 100, 25):
            response = server.post("/items", files=files(label, start, 25), data={"labels": label})
            assert response.status_code == 201, response.text
    assert server.get("/items").json()["total"] == 200

    correct = 0
    held_out = [(label, f) for label in ("cat", "bird") for f in files(label, 4900, 20)]
    for label, (_, upload) in held_out:
        body = server.post("/search", files={"file": upload}, data={"k": "10"}).json()
        assert len(body["neighbors"]) == 10
        correct += body["prediction"]["label"] == label
    accuracy = correct / len(held_out)
    print(f"kNN accuracy on 40 held-out CIFAR images: {accuracy:.2f}")
    assert accuracy >= 0.6

    clusters = server.post("/cluster", json={"k": 2}).json()
    assert clusters["k"] == 2 and len(clusters["assignments"]) == 200
    print("cluster metrics:", clusters["metrics"])

    before = server.get("/model").json()["version"]
    job = server.post("/train", json={"epochs": 1, "batch_size": 32, "activate": "never"}).json()
    query = files("cat", 4800, 1)[0][1]
    searches = 0
    while True:
        status = server.get(f"/train/{job['job_id']}").json()
        if status["status"] in ("succeeded", "failed", "cancelled"):
            break
        response = server.post("/search", files={"file": query}, data={"k": "5"})
        assert response.status_code == 200 and response.json()["model_version"] == before
        searches += 1
    assert status["status"] == "succeeded", status["error"]
    assert searches > 0
    new_version = status["model_version"]

    activated = server.post(f"/models/{new_version}/activate", params={"wait": "true"})
    assert activated.status_code == 200 and activated.json()["reembedded"] == 200
    assert server.get("/model").json()["version"] == new_version
    items = server.get("/items", params={"limit": 1000}).json()
    assert items["total"] == 200
    for item in items["items"]:
        assert item["model_version"] == new_version
        hit = server.post("/search", json={"id": item["id"], "k": 1}).json()
        assert hit["model_version"] == new_version and len(hit["neighbors"]) == 1


def test_python_client(server: httpx.Client, tmp_path: Path) -> None:
    from app.client import EmbedClient, EmbedServiceError

    cats = sorted((CIFAR / "cat").iterdir())[:3]
    birds = sorted((CIFAR / "bird").iterdir())[:3]
    with EmbedClient(str(server.base_url)) as client:
        assert client.ready()
        ids = client.add_items(cats, labels=["cat"], metadata={"via": "client"})
        ids += client.add_items(birds, labels=["bird"])
        assert client.get_item(ids[0])["metadata"] == {"via": "client"}
        assert client.list_items(label="bird")["total"] == 3
        vector = client.embed([cats[0]])[0]
        array = client.embed_array([cats[0], birds[0]])  # the same vectors, sent as .npy
        assert array.shape == (2, 128) and abs(array[0] - vector).max() < 1e-6
        exported = client.export_vectors()
        assert exported["id"].tolist() == ids and exported["label"][0] == "cat"
        created = client.put_item("photo-1", birds[2], label="bird", metadata={"v": 1})
        replaced = client.put_item("photo-1", cats[2], label="cat")  # same id, new content
        assert replaced["id"] == created["id"] and replaced["metadata"] == {}
        assert client.get_item("photo-1")["label"] == "cat"
        client.delete_item("photo-1")
        stored = client.get_item(ids[0], include_vector=True)["vector"]
        assert abs(exported["vector"][0] - stored).max() < 1e-6
        assert client.search_vector(vector, k=1)["neighbors"][0]["id"] == ids[0]
        assert len(client.search_item(ids[0], k=2)["neighbors"]) == 2
        assert client.search_image(birds[1], k=1)["neighbors"][0]["id"] == ids[4]
        assert client.cluster(k=2)["k"] == 2
        batch = client.search_many([birds[1], ids[0], vector], k=2)
        alone = [
            client.search_image(birds[1], k=2),
            client.search_item(ids[0], k=2),
            client.search_vector(vector, k=2),
        ]
        for together, single in zip(batch, alone, strict=True):
            assert [n["id"] for n in together["neighbors"]] == [
                n["id"] for n in single["neighbors"]
            ]
        only_client_items = {"metadata.via": "client"}
        assert client.list_items(where=only_client_items)["total"] == 3
        found = client.search_image(birds[1], k=5, where=only_client_items)["neighbors"]
        assert sorted(n["id"] for n in found) == ids[:3]
        assert client.cluster(k=2, where=only_client_items)["items"] == 3
        archive = tmp_path / "more.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for path in sorted((CIFAR / "dog").iterdir())[:4]:
                zipped.write(path, f"dog/{path.name}")
        imported = client.import_archive(archive, metadata={"via": "zip"}, wait=60)
        assert imported["status"] == "succeeded" and imported["labels"] == {"dog": 4}
        assert client.list_items(where={"metadata.via": "zip", "label": "dog"})["total"] == 4
        client.delete_item(ids[0])
        try:
            client.get_item(ids[0])
        except EmbedServiceError as error:
            assert error.status == 404
        else:
            raise AssertionError("deleted item still readable")

    server.get("/healthz", headers={"X-Request-ID": "trace-me-42"})
    time.sleep(0.2)
    lines = (tmp_path / "server.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(entries) > len(lines) * 0.9  # the server logs JSON
    traced = [e for e in entries if e.get("request_id") == "trace-me-42"]
    assert traced and traced[0]["path"] == "/healthz" and traced[0]["status"] == 200
