"""Crash safety: SIGKILL the server while clients add items; nothing acknowledged is lost."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import httpx2 as httpx
import pytest

from tests.conftest import CIFAR
from tests.server import ServerProcess

pytestmark = pytest.mark.slow


def test_sigkill_during_writes_loses_no_acknowledged_item(
    server_process: Callable[..., ServerProcess],
) -> None:
    rng = random.Random(7)
    images = {
        label: [p.read_bytes() for p in sorted((CIFAR / label).iterdir())[:60]]
        for label in ("cat", "bird")
    }
    acknowledged: dict[int, str] = {}
    lock = threading.Lock()
    server = server_process()
    for round_ in range(3):
        if round_:
            server.start()
        stop = threading.Event()

        def client_loop(seed: int, stop: threading.Event) -> None:
            local = random.Random(seed)
            with server.client(timeout=10) as client:
                while not stop.is_set():
                    label = local.choice(["cat", "bird"])
                    data = local.choice(images[label])
                    try:
                        response = client.post(
                            "/items",
                            files={"files": ("x.jpg", data, "image/jpeg")},
                            data={"labels": label},
                        )
                    except httpx.TransportError:
                        return  # the server died mid-request: not acknowledged
                    if response.status_code == 201:
                        with lock:
                            for item in response.json()["items"]:
                                acknowledged[item["id"]] = label

        threads = [
            threading.Thread(target=client_loop, args=(round_ * 10 + i, stop)) for i in range(4)
        ]
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(1.0, 3.0))
        server.kill()
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    assert len(acknowledged) > 10
    server.start()
    with server.client(timeout=30) as client:
        for item_id, label in acknowledged.items():
            item = client.get(f"/items/{item_id}")
            assert item.status_code == 200, item_id
            assert item.json()["label"] == label
            hit = client.post("/search", json={"id": item_id, "k": 1})
            assert hit.status_code == 200 and len(hit.json()["neighbors"]) == 1
        total = client.get("/items").json()["total"]
        index_size = next(
            float(line.split()[-1])
            for line in client.get("/metrics").text.splitlines()
            if line.startswith("embed_index_vectors")
        )
        assert index_size == total >= len(acknowledged)


def test_sigkill_during_activation_leaves_the_old_model(
    server_process: Callable[..., ServerProcess],
) -> None:
    server = server_process()

    def add_items(client: httpx.Client, start: int, stop: int) -> None:
        for label in ("cat", "bird"):
            paths = sorted((CIFAR / label).iterdir())[start:stop]
            for start_at in range(0, len(paths), 50):
                chunk = paths[start_at : start_at + 50]
                files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in chunk]
                response = client.post("/items", files=files, data={"labels": label})
                assert response.status_code == 201

    with server.client(timeout=120) as client:
        # a second model, trained on the first 200 items; the activation re-embeds all 2,000
        add_items(client, 0, 100)
        old = client.get("/model").json()["version"]
        job = client.post("/train", json={"epochs": 1, "activate": "never"}).json()
        deadline = time.monotonic() + 300
        while (status := client.get(f"/train/{job['job_id']}").json())["status"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert status["status"] == "succeeded", status["error"]
        new = status["model_version"]
        add_items(client, 100, 1000)
        assert client.post(f"/models/{new}/activate").status_code == 202
        while True:  # kill once some items, but not all, have their new vectors
            models = client.get("/models").json()
            assert models["activating"] == new, models
            progress = models["activation_progress"]
            if 0 < progress["reembedded"] < progress["total"]:
                break
            assert time.monotonic() < deadline
            time.sleep(0.01)
    server.kill()
    server.start()
    with server.client(timeout=60) as client:
        assert client.get("/model").json()["version"] == old
        assert client.get("/items").json()["total"] == 2000
        hit = client.post("/search", json={"id": 1, "k": 5}).json()
        assert hit["model_version"] == old and len(hit["neighbors"]) == 5
        assert client.post(f"/models/{new}/activate", params={"wait": "true"}).status_code == 200
        assert client.get("/model").json()["version"] == new
