"""Caller-chosen ids: ``PUT /items/{external_id}`` creates or replaces, ``GET``/``DELETE``
find the item by it, ``POST /items`` takes ``external_ids``; hostile ids are refused."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.store.sqlite import SqliteDatabase
from tests.app.conftest import cifar_upload, item_count

CAT = cifar_upload("cat", 0, 1)[0][1]
BIRD = cifar_upload("bird", 0, 1)[0][1]


def put(client: TestClient, external_id: str, image: tuple[str, bytes, str], **form: str):  # type: ignore[no-untyped-def]
    return client.put(f"/items/{external_id}", files={"file": image}, data=form)


def test_put_creates_then_replaces_keeping_the_item_id(client: TestClient) -> None:
    created = put(client, "sku-42", CAT, label="cat", metadata='{"shop": "a"}')
    assert created.status_code == 201, created.text
    item = created.json()
    assert item["external_id"] == "sku-42" and item["label"] == "cat"

    replaced = put(client, "sku-42", BIRD, label="bird")
    assert replaced.status_code == 200
    again = replaced.json()
    assert again["id"] == item["id"] and again["created_at"] == item["created_at"]
    assert again["label"] == "bird" and again["metadata"] == {}  # what is left out is cleared
    assert again["image_hash"] != item["image_hash"] and item_count(client) == 1

    by_external = client.get("/items/sku-42").json()
    assert by_external == client.get(f"/items/{item['id']}").json() == again
    assert client.get("/items/sku-42/image").content == BIRD[1]
    # the index holds the new image's vector: the bird finds its item, the cat image is gone
    search = client.post("/search", files={"file": BIRD}, data={"k": "1"}).json()
    assert search["neighbors"][0]["id"] == item["id"] and search["neighbors"][0]["score"] > 0.999
    data_dir = client.app.state.services.settings.data_dir  # type: ignore[attr-defined]
    assert not list(data_dir.rglob(f"{item['image_hash']}.*"))  # the replaced image is removed

    assert client.delete("/items/sku-42").status_code == 204
    assert client.get("/items/sku-42").status_code == 404
    assert client.get(f"/items/{item['id']}").status_code == 404
    assert put(client, "sku-42", CAT).status_code == 201  # free again


def test_post_takes_external_ids_and_refuses_one_in_use(client: TestClient) -> None:
    files = cifar_upload("cat", 0, 2)
    response = client.post(
        "/items", files=files, data={"labels": "cat", "external_ids": ["a-1", "a-2"]}
    )
    assert response.status_code == 201, response.text
    assert [i["external_id"] for i in response.json()["items"]] == ["a-1", "a-2"]
    taken = client.post(
        "/items",
        files=cifar_upload("bird", 0, 2),
        data={"labels": "bird", "external_ids": ["b-1", "a-2"]},
    )
    assert taken.status_code == 409 and "a-2" in taken.json()["detail"]
    assert item_count(client) == 2  # nothing of the refused request was stored
    for external_ids, status in ((["x-1"], 400), (["x-1", "x-1"], 400)):
        response = client.post(
            "/items", files=cifar_upload("bird", 0, 2), data={"external_ids": external_ids}
        )
        assert response.status_code == status, external_ids
    assert item_count(client) == 2


@pytest.mark.parametrize(
    "external_id",
    [
        "..",
        ".hidden",
        "a%2Fb",  # a slash, percent-encoded
        "a%00b",  # a NUL
        "a%0Ab",  # a newline
        "a%20b",  # a space
        "12345",  # only digits: it would read as an item id
        "é-1",
        "x" * 129,
        "x" * 10_000,
    ],
)
def test_hostile_external_ids_are_refused(client: TestClient, external_id: str) -> None:
    response = put(client, external_id, CAT)
    assert response.status_code in (404, 405, 422), (external_id, response.status_code)
    assert item_count(client) == 0


def test_hostile_external_ids_in_a_post_are_refused(client: TestClient) -> None:
    for external_id in ("a/b", "..", "12", "x" * 10_000, "a\x00b"):
        response = client.post("/items", files=[("files", CAT)], data={"external_ids": external_id})
        assert response.status_code == 422, external_id
    assert item_count(client) == 0


def test_the_longest_external_id_and_odd_but_allowed_characters(client: TestClient) -> None:
    for external_id in ("x" * 128, "9a", "user@example.com:photo+1=~2.jpg"):
        assert put(client, external_id, CAT).status_code == 201, external_id
        assert client.get(f"/items/{external_id}").json()["external_id"] == external_id


def test_external_ids_are_exported(client: TestClient) -> None:
    put(client, "sku-1", CAT, label="cat")
    client.post("/items", files=[("files", BIRD)])
    rows = [json.loads(line) for line in client.get("/vectors").text.splitlines()]
    assert [r["external_id"] for r in rows] == ["sku-1", None]
    records = np.load(io.BytesIO(client.get("/vectors?format=npy").content), allow_pickle=False)
    assert records["external_id"].tolist() == ["sku-1", ""]


def test_a_database_from_before_external_ids_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, label TEXT, "
        "metadata TEXT NOT NULL DEFAULT '{}', filename TEXT NOT NULL, image_hash TEXT NOT NULL, "
        "image_ext TEXT NOT NULL, created_at TEXT NOT NULL);"
        "INSERT INTO items(label, filename, image_hash, image_ext, created_at) "
        "VALUES ('cat', 'a.jpg', 'h', 'jpg', 'then');"
    )
    old.commit()
    old.close()
    db = SqliteDatabase(path)
    record = db.get_item(1)
    assert record is not None and record.external_id is None and record.label == "cat"
    assert db.item_by_external_id("anything") is None
    db.close()
    SqliteDatabase(path).close()  # a second start finds it migrated


def test_put_by_item_id_replaces_an_existing_item_only(client: TestClient) -> None:
    (item_id,) = [i["id"] for i in client.post("/items", files=[("files", CAT)]).json()["items"]]
    replaced = put(client, str(item_id), BIRD, label="bird")
    assert replaced.status_code == 200 and replaced.json()["id"] == item_id
    assert replaced.json()["external_id"] is None and replaced.json()["label"] == "bird"
    assert put(client, "999", BIRD).status_code == 404  # an item id cannot be chosen
    named = put(client, "shop-7", CAT).json()
    again = put(client, str(named["id"]), BIRD)  # by item id, the external id stays
    assert again.status_code == 200 and again.json()["external_id"] == "shop-7"
    assert item_count(client) == 2
