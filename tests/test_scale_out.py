"""Scale-out on PostgreSQL: several server processes share one real PostgreSQL server (with
pgvector) and one data folder, as workers and replicas do. Each test starts its own workers
(``python -m app``) and, where it kills the database, its own PostgreSQL server."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import pytest
import torch

from model.checkpoint import save_model
from model.config import ModelConfig
from model.network import EmbeddingNet
from tests.conftest import CIFAR, DEFAULT_MODEL, ROOT
from tests.postgres import PostgresForTests
from tests.server import ServerProcess

pytestmark = pytest.mark.slow

Start = Callable[..., ServerProcess]


def images(label: str, count: int, start: int = 0) -> list[bytes]:
    return [p.read_bytes() for p in sorted((CIFAR / label).iterdir())[start : start + count]]


def add_items(client: httpx.Client, label: str, data: list[bytes]) -> list[int]:
    files = [("files", (f"{label}{i}.jpg", d, "image/jpeg")) for i, d in enumerate(data)]
    response = client.post("/items", files=files, data={"labels": label})
    assert response.status_code == 201, response.text
    return [item["id"] for item in response.json()["items"]]


def workers(
    start: Start, url: str, tmp_path: Path, count: int = 2, **env: str
) -> list[ServerProcess]:
    """``count`` workers on one database and one data folder (started one after another: the
    first registers the model and chooses the backend, the others find both)."""
    shared = {"EMBED_DATABASE_URL": url, "EMBED_MODEL_POLL_S": "0.5"}
    return [
        start(env=shared, name=f"worker{n}", data_dir=tmp_path / "shared") for n in range(count)
    ]


def test_an_item_added_through_one_worker_is_found_through_the_other(
    postgres_url: str, server_process: Start, tmp_path: Path
) -> None:
    first, second = workers(server_process, postgres_url, tmp_path)
    cats, birds = images("cat", 6), images("bird", 6)
    with first.client() as one, second.client() as two:
        cat_ids = add_items(one, "cat", cats)
        bird_ids = add_items(two, "bird", birds)
        assert two.get("/items").json()["total"] == one.get("/items").json()["total"] == 12
        # a stored image, searched through the other worker, finds itself first
        hit = two.post("/search", files={"file": ("q.jpg", cats[0], "image/jpeg")}, data={"k": 3})
        assert hit.status_code == 200
        assert hit.json()["neighbors"][0]["id"] == cat_ids[0]
        assert one.get(f"/items/{bird_ids[2]}").json()["label"] == "bird"
        by_id = one.post("/search", json={"id": bird_ids[2], "k": 11})
        assert {n["id"] for n in by_id.json()["neighbors"]} == set(cat_ids + bird_ids) - {
            bird_ids[2]
        }
        # deleted through one worker: gone from the other at once
        assert one.delete(f"/items/{cat_ids[0]}").status_code == 204
        assert two.get(f"/items/{cat_ids[0]}").status_code == 404
        again = two.post(
            "/search", files={"file": ("q.jpg", cats[0], "image/jpeg")}, data={"k": 12}
        )
        assert cat_ids[0] not in {n["id"] for n in again.json()["neighbors"]}
        clusters = two.post("/cluster", json={"k": 2}).json()
        assert clusters["items"] == 11


def test_an_activation_through_one_worker_switches_every_worker(
    postgres_url: str, server_process: Start, tmp_path: Path
) -> None:
    torch.manual_seed(1)
    second_model = tmp_path / "second-model"
    net = EmbeddingNet(ModelConfig(embedding_dim=64, labels=("bird", "cat")))
    save_model(net, second_model, metrics={"val_precision_at_1": 0.5})
    first = workers(server_process, postgres_url, tmp_path, count=1)[0]
    # a worker configured with another model registers it; the active one stays active
    second = server_process(
        env={
            "EMBED_DATABASE_URL": postgres_url,
            "EMBED_MODEL_POLL_S": "0.5",
            "EMBED_MODEL_DIR": str(second_model),
        },
        name="worker1",
        data_dir=tmp_path / "shared",
    )
    with first.client() as one, second.client() as two:
        add_items(one, "cat", images("cat", 5))
        old = one.get("/model").json()["version"]
        assert two.get("/model").json()["version"] == old
        new = next(m["version"] for m in two.get("/models").json()["models"] if not m["active"])
        answer = one.post(f"/models/{new}/activate", params={"wait": "true"})
        assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 20
        while two.get("/model").json()["version"] != new:
            assert time.monotonic() < deadline, "the other worker never switched"
            time.sleep(0.2)
        # both answer with the new model's 64-d vectors, and search its vectors only
        for client in (one, two):
            embedded = client.post(
                "/embed", files={"files": ("q.jpg", images("bird", 1)[0], "image/jpeg")}
            ).json()
            assert embedded["model_version"] == new and embedded["dim"] == 64
            found = client.post("/search", json={"vector": [1.0] * 64, "k": 10}).json()
            assert found["model_version"] == new and len(found["neighbors"]) == 5
        # an item added through either worker now has a vector of the new model only
        (item_id,) = add_items(two, "bird", images("bird", 1, start=3))
        assert one.post("/search", json={"id": item_id, "k": 1}).status_code == 200


def test_a_worker_killed_mid_write_loses_no_acknowledged_item(
    postgres_url: str, server_process: Start, tmp_path: Path
) -> None:
    first, second = workers(server_process, postgres_url, tmp_path)
    acknowledged = write_until_stopped(
        first, lambda: first.kill(), clients=4, seconds=random.Random(3).uniform(1.5, 3.0)
    )
    assert len(acknowledged) > 5
    with second.client() as two:
        for item_id, label in acknowledged.items():
            item = two.get(f"/items/{item_id}")
            assert item.status_code == 200 and item.json()["label"] == label
        assert two.post("/search", json={"id": min(acknowledged), "k": 1}).status_code == 200


def write_until_stopped(
    server: ServerProcess, stop_action: Callable[[], None], clients: int, seconds: float
) -> dict[int, str]:
    """``clients`` threads add one image at a time until ``stop_action`` (after ``seconds``)
    breaks the service, and keep trying for 3 s more; returns the acknowledged items."""
    pool = {label: images(label, 40) for label in ("cat", "bird")}
    acknowledged: dict[int, str] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def loop(seed: int) -> None:
        local = random.Random(seed)
        with server.client(timeout=10) as client:
            while not stop.is_set():
                label = local.choice(["cat", "bird"])
                try:
                    response = client.post(
                        "/items",
                        files={"files": ("x.jpg", local.choice(pool[label]), "image/jpeg")},
                        data={"labels": label},
                    )
                except httpx.TransportError:
                    time.sleep(0.05)
                    continue  # not acknowledged
                if response.status_code == 201:
                    with lock:
                        for item in response.json()["items"]:
                            acknowledged[item["id"]] = label
                else:
                    assert response.status_code == 503, response.text
                    time.sleep(0.05)

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop_action()
    time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    return acknowledged


def test_postgres_killed_under_four_writers_loses_no_acknowledged_item(
    server_process: Start, tmp_path: Path
) -> None:
    database = PostgresForTests()
    try:
        url = database.new_database()
        (worker,) = workers(server_process, url, tmp_path, count=1)
        acknowledged = write_until_stopped(worker, database.kill, clients=4, seconds=2.5)
        with worker.client() as client:  # the database is down: 503, not a 500 or a hang
            down = client.get("/items")
            assert down.status_code == 503 and "unreachable" in down.json()["detail"]
        database.restart()
        with worker.client() as client:
            deadline = time.monotonic() + 30
            while (listed := client.get("/items", params={"limit": 1})).status_code != 200:
                assert time.monotonic() < deadline, listed.text
                time.sleep(0.5)
            assert len(acknowledged) > 5
            for item_id, label in acknowledged.items():
                item = client.get(f"/items/{item_id}")
                assert item.status_code == 200 and item.json()["label"] == label
            assert add_items(client, "cat", images("cat", 1, start=50))  # writes work again
    finally:
        database.stop()


def test_a_worker_stops_cleanly_while_its_database_is_gone(
    server_process: Start, postgres_server: PostgresForTests, tmp_path: Path
) -> None:
    """SIGTERM with the database dropped: shutting down reads nothing from it, so it ends
    cleanly and at once (it used to wait out the pool's 10 s timeout, then fail)."""
    url = postgres_server.new_database()
    (worker,) = workers(server_process, url, tmp_path, count=1)
    postgres_server.drop_database(url)
    worker.stop()
    log = worker.log.read_text()
    assert "Application shutdown complete" in log and "shutdown failed" not in log, log[-3000:]


def test_two_workers_racing_for_one_training_job_run_it_once(
    postgres_url: str, server_process: Start, tmp_path: Path
) -> None:
    first, second = workers(server_process, postgres_url, tmp_path)
    with first.client() as one, second.client() as two:
        add_items(one, "cat", images("cat", 8))
        add_items(one, "bird", images("bird", 8))
        request = {"dataset": {"source": "items"}, "epochs": 30, "activate": "never"}
        barrier = threading.Barrier(2)
        answers: list[httpx.Response] = []

        def post(client: httpx.Client) -> None:
            barrier.wait()
            answers.append(client.post("/train", json=request))

        racers = [threading.Thread(target=post, args=(c,)) for c in (one, two)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()
        assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]
        job_id = next(a.json()["job_id"] for a in answers if a.status_code == 202)
        assert len(two.get("/train").json()["jobs"]) == len(one.get("/train").json()["jobs"]) == 1
        # cancelled through either worker: the worker running it stops it and frees the claim
        runner = one if answers[0].status_code == 202 else two
        other = two if runner is one else one
        assert other.delete(f"/train/{job_id}").status_code == 200
        deadline = time.monotonic() + 60
        while (again := other.post("/train", json=request)).status_code == 409:
            assert time.monotonic() < deadline, again.text
            time.sleep(1)
        assert again.status_code == 202, again.text
        runner.delete(f"/train/{again.json()['job_id']}")


def test_workers_flag_runs_several_processes_on_postgres(
    postgres_url: str, server_process: Start, tmp_path: Path
) -> None:
    server = server_process(
        env={"EMBED_DATABASE_URL": postgres_url}, name="supervisor", args=["--workers", "2"]
    )
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    assert len(children) >= 2  # uvicorn's supervisor and its two workers
    with server.client() as client:
        ids = add_items(client, "cat", images("cat", 4))
        for item_id in ids * 2:  # requests spread over both workers find every item
            assert client.get(f"/items/{item_id}").status_code == 200


def test_start_up_fails_clearly_when_the_database_is_unreachable(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "EMBED_DATA_DIR": str(tmp_path / "data"),
        "EMBED_MODEL_DIR": str(DEFAULT_MODEL),
        "EMBED_DATABASE_URL": f"postgresql://nobody@/embed?host={tmp_path}&port=1",
        "EMBED_DATABASE_WAIT_S": "2",
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "app", "--port", "1", "--workers", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "cannot start: PostgreSQL at" in done.stderr and "unreachable" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert time.monotonic() - started < 60
    sqlite_workers = subprocess.run(
        [sys.executable, "-m", "app", "--port", "1", "--workers", "2"],
        cwd=ROOT,
        env={k: v for k, v in env.items() if k != "EMBED_DATABASE_URL"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sqlite_workers.returncode != 0 and "--workers needs EMBED_DATABASE_URL" in (
        sqlite_workers.stderr
    )
