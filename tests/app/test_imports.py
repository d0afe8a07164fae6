"""Bulk imports of a zip of class folders: a job that stores the images as items."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import item_count, make_settings, zipped
from tests.conftest import CIFAR


def images(label: str, count: int, start: int = 0) -> dict[str, bytes]:
    paths = sorted((CIFAR / label).iterdir())[start : start + count]
    return {f"{label}/{p.name}": p.read_bytes() for p in paths}


def start(client: TestClient, archive: bytes, **fields: str) -> Any:
    return client.post("/imports", files={"archive": ("set.zip", archive)}, data=fields)


def wait_for(client: TestClient, import_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = client.get(f"/imports/{import_id}").json()
        if record["status"] in ("succeeded", "failed", "cancelled"):
            return record  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"import {import_id} did not finish")


def test_an_archive_becomes_labelled_items(client: TestClient) -> None:
    entries = {
        **images("cat", 25),
        **images("bird", 15),
        "bird/broken.jpg": b"\xff\xd8\xff\xe0 not really a jpeg",
        "bird/notes.txt": b"skipped: not an image",
        "__MACOSX/cat/._0000.jpg": b"resource fork",
        "nested/deeper/dog/0.jpg": next(iter(images("dog", 1).values())),
    }
    response = start(client, zipped(entries), metadata=json.dumps({"source": "bulk"}))
    assert response.status_code == 202, response.text
    assert response.json()["total"] == 42 and response.json()["filename"] == "set.zip"
    record = wait_for(client, response.json()["import_id"])
    assert record["status"] == "succeeded", record
    assert (record["added"], record["failed"]) == (41, 1)
    assert record["labels"] == {"cat": 25, "bird": 15, "dog": 1}
    assert record["failures"][0]["member"] == "bird/broken.jpg"
    assert item_count(client) == 41
    cats = client.get("/items", params={"label": "cat", "limit": 100}).json()
    assert cats["total"] == 25
    assert {i["metadata"]["source"] for i in cats["items"]} == {"bulk"}
    assert [r["import_id"] for r in client.get("/imports").json()["imports"]] == [
        record["import_id"]
    ]
    query = next(iter(images("cat", 1, start=3).values()))
    found = client.post("/search", files={"file": ("q.jpg", query)}, data={"k": "1"}).json()
    assert found["neighbors"][0]["score"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    ("archive", "status"),
    [
        (zipped({"../cat/escape.jpg": b"x"}), 400),  # zip slip
        (zipped({"/etc/cat/abs.jpg": b"x"}), 400),
        (zipped(images("cat", 2), link="cat/link.jpg"), 400),
        (zipped({"c@t!/0.jpg": b"x"}), 400),  # not a label
        (zipped({"loose.jpg": b"x"}), 400),  # not in a class folder
        (zipped({"cat/readme.txt": b"no images"}), 400),
        (zipped({"cat/bomb.jpg": b"\0" * 5_000_000}), 400),  # compresses 5000:1
        (b"PK\x03\x04 not a zip", 400),
    ],
)
def test_hostile_archives_are_refused_and_nothing_is_stored(
    client: TestClient, archive: bytes, status: int
) -> None:
    response = start(client, archive)
    assert response.status_code == status, response.text
    assert client.get("/imports").json()["imports"] == []
    assert item_count(client) == 0


def test_bad_fields(client: TestClient) -> None:
    archive = zipped(images("cat", 2))
    assert start(client, archive, metadata="[1]").status_code == 400
    assert start(client, archive, metadata="{").status_code == 400
    assert client.post("/imports", data={"metadata": "{}"}).status_code == 422
    assert client.get("/imports/nope").status_code == 404
    assert client.delete("/imports/nope").status_code == 404


def test_an_archive_expanding_past_the_limit_is_413(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", max_archive_mb=0.01)
    with TestClient(create_app(settings)) as client:
        assert start(client, zipped(images("cat", 20))).status_code == 413


def test_a_cancelled_import_stops_and_keeps_what_it_added(client: TestClient) -> None:
    catalog = client.app.state.services.catalog  # type: ignore[attr-defined]
    first_chunk_done, resume = threading.Event(), threading.Event()
    add = catalog.add

    def add_then_wait(*args: Any, **kwargs: Any) -> Any:
        records = add(*args, **kwargs)
        first_chunk_done.set()
        resume.wait(30)
        return records

    catalog.add = add_then_wait
    response = start(client, zipped(images("cat", 100)))
    assert response.status_code == 202
    import_id = response.json()["import_id"]
    assert first_chunk_done.wait(30)
    assert client.get(f"/imports/{import_id}").json()["status"] == "running"
    assert client.delete(f"/imports/{import_id}").status_code == 200
    resume.set()
    record = wait_for(client, import_id)
    assert record["status"] == "cancelled" and record["error"] == "cancelled by a request"
    assert record["added"] == 32 and item_count(client) == 32


def test_a_shutdown_stops_a_running_import_and_keeps_what_it_added(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    first_chunk_done = threading.Event()
    with TestClient(create_app(settings)) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        add = services.catalog.add

        def add_then_wait_for_shutdown(*args: Any, **kwargs: Any) -> Any:
            records = add(*args, **kwargs)
            first_chunk_done.set()
            deadline = time.monotonic() + 30
            while not services.imports._closing and time.monotonic() < deadline:
                time.sleep(0.05)
            return records

        services.catalog.add = add_then_wait_for_shutdown
        response = start(client, zipped(images("cat", 100)))
        assert response.status_code == 202
        import_id = response.json()["import_id"]
        assert first_chunk_done.wait(30)
    with TestClient(create_app(settings)) as client:
        record = client.get(f"/imports/{import_id}").json()
        assert record["status"] == "cancelled" and record["error"] == "the server shut down"
        assert record["added"] == 32 and item_count(client) == 32


def test_a_restart_ends_an_unfinished_import(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        client.app.state.services.db.add_import("abc", "set.zip", 10)  # type: ignore[attr-defined]
    with TestClient(create_app(settings)) as client:
        record = client.get("/imports/abc").json()
        assert record["status"] == "failed" and "restart" in record["error"]
