"""Vectors out: ``GET /items/{id}?include=vector`` and the streamed export, JSON lines and
``.npy``, agree with each other and read one database snapshot."""

from __future__ import annotations

import io
import json

import numpy as np
from fastapi.testclient import TestClient

from tests.app.conftest import add
from tests.conftest import CIFAR


def test_one_item_with_its_vector(client: TestClient) -> None:
    (item_id,) = add(client, "cat", 0, 1)
    plain = client.get(f"/items/{item_id}").json()
    assert "vector" not in plain  # only when asked for
    with_vector = client.get(f"/items/{item_id}", params={"include": "vector"}).json()
    vector = np.array(with_vector["vector"], dtype=np.float32)
    assert vector.shape == (128,) and abs(float(vector @ vector) - 1) < 1e-4
    search = client.post("/search", json={"vector": with_vector["vector"], "k": 1}).json()
    assert search["neighbors"][0]["id"] == item_id  # the stored vector finds its own item
    assert client.get(f"/items/{item_id}", params={"include": "nonsense"}).status_code == 422
    assert client.get("/items/999", params={"include": "vector"}).status_code == 404


def test_export_as_json_lines_and_as_npy_hold_the_same_vectors(client: TestClient) -> None:
    cats, birds = add(client, "cat", 0, 5), add(client, "bird", 0, 4)
    unlabelled_image = sorted((CIFAR / "cat").iterdir())[50].read_bytes()
    unlabelled = client.post(
        "/items", files=[("files", ("x.jpg", unlabelled_image, "image/jpeg"))]
    ).json()["items"][0]["id"]
    version = client.get("/model").json()["version"]

    lines = client.get("/vectors")
    assert lines.status_code == 200 and lines.headers["content-type"] == "application/x-ndjson"
    assert lines.headers["x-model-version"] == version and lines.headers["x-item-count"] == "10"
    rows = [json.loads(line) for line in lines.text.splitlines()]
    assert [r["id"] for r in rows] == sorted([*cats, *birds, unlabelled])
    assert {r["id"]: r["label"] for r in rows}[unlabelled] is None
    first = client.get(f"/items/{cats[0]}", params={"include": "vector"}).json()["vector"]
    np.testing.assert_allclose(rows[0]["vector"], first, atol=1e-6)

    binary = client.get("/vectors", params={"format": "npy", "model_version": version})
    assert binary.headers["content-type"] == "application/x-npy"
    records = np.load(io.BytesIO(binary.content), allow_pickle=False)
    assert records.shape == (10,) and records["vector"].dtype == np.float32
    assert records["id"].tolist() == [r["id"] for r in rows]
    assert records["label"].tolist() == [r["label"] or "" for r in rows]
    np.testing.assert_allclose(records["vector"], [r["vector"] for r in rows], atol=1e-6)


def test_an_empty_store_exports_nothing(client: TestClient) -> None:
    assert client.get("/vectors").text == ""
    records = np.load(io.BytesIO(client.get("/vectors?format=npy").content), allow_pickle=False)
    assert records.shape == (0,)
    assert records.dtype.names == ("id", "external_id", "label", "vector")


def test_the_export_reads_one_snapshot(client: TestClient) -> None:
    """Items deleted or added while an export streams change neither its count nor its
    rows, so a .npy file's header always matches its body."""
    ids = add(client, "cat", 0, 6)
    services = client.app.state.services  # type: ignore[attr-defined]
    snapshot = services.runtime.snapshot
    # pages of 2, so that pages are read after the changes
    total, pages = services.db.export_vectors(snapshot.version, snapshot.embedder.dim, page=2)
    first = next(pages)  # the export has started reading
    assert client.delete(f"/items/{ids[-1]}").status_code == 204
    add(client, "bird", 0, 3)
    exported = [int(i) for i in first[0]] + [int(i) for page in pages for i in page[0]]
    assert total == 6 and exported == ids


def test_bad_export_parameters(client: TestClient) -> None:
    assert client.get("/vectors", params={"format": "csv"}).status_code == 422
    assert client.get("/vectors", params={"model_version": "nope"}).status_code == 404
