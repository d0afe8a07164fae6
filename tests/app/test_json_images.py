"""Images as base64 in JSON bodies on /embed, /items and /search: the same answers as
multipart uploads, and the same limits and errors."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import add, cifar_upload, item_count, make_settings
from tests.conftest import CIFAR


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def cats(count: int, start: int = 0) -> list[Path]:
    return sorted((CIFAR / "cat").iterdir())[start : start + count]


def test_embed_json_gives_the_multipart_vectors(client: TestClient) -> None:
    paths = cats(3)
    images = [{"data": b64(p), "filename": p.name} for p in paths]
    images[1]["data"] = "data:image/png;base64," + images[1]["data"]  # a data URL
    images[2]["data"] = base64.encodebytes(paths[2].read_bytes()).decode()  # MIME line breaks
    from_json = client.post("/embed", json={"images": images})
    assert from_json.status_code == 200, from_json.text
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    from_multipart = client.post("/embed", files=files).json()
    assert from_json.json() == from_multipart
    assert [e["filename"] for e in from_json.json()["embeddings"]] == [p.name for p in paths]


def test_items_from_json_are_stored_with_labels_ids_and_metadata(client: TestClient) -> None:
    paths = cats(2)
    body = {
        "images": [{"data": b64(p)} for p in paths],
        "labels": ["cat"],
        "metadata": [{"shelf": 1}, {"shelf": 2}],
        "external_ids": ["sku-1", "sku-2"],
    }
    response = client.post("/items", json=body, headers={"Idempotency-Key": "k1"})
    assert response.status_code == 201, response.text
    created = response.json()["items"]
    assert [(i["external_id"], i["label"], i["filename"]) for i in created] == [
        ("sku-1", "cat", "image-0"),
        ("sku-2", "cat", "image-1"),
    ]
    stored = client.get("/items/sku-2").json()
    assert stored["metadata"] == {"shelf": 2}
    assert client.get(f"/items/{stored['id']}/image").content == paths[1].read_bytes()
    # a retry with the key answers the same without storing again; another body is 409
    again = client.post("/items", json=body, headers={"Idempotency-Key": "k1"})
    assert again.status_code == 201 and again.json() == response.json()
    assert item_count(client) == 2
    other = client.post(
        "/items", json={**body, "labels": ["dog"]}, headers={"Idempotency-Key": "k1"}
    )
    assert other.status_code == 409


def test_search_by_a_json_image_finds_its_stored_copy(client: TestClient) -> None:
    add(client, "cat", 0, 5)
    path = cats(1, start=3)[0]
    response = client.post("/search", json={"image": {"data": b64(path)}, "k": 2})
    assert response.status_code == 200, response.text
    nearest = response.json()["neighbors"][0]
    assert nearest["filename"] == path.name and nearest["score"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    ("image", "status"),
    [
        ({"data": "not base64!"}, 422),
        ({"data": "QUJDRA"}, 422),  # padding missing
        ({"data": ""}, 422),
        ({"data": "===="}, 422),  # decodes to nothing
        ({"data": "data:image/png,abc"}, 422),  # a data URL that is not base64
        ({"data": 123}, 422),
        ({"data": "QUJD", "extra": 1}, 422),
        ({"filename": "x.jpg"}, 422),
    ],
)
def test_bad_json_images(client: TestClient, image: dict, status: int) -> None:
    for path, body in (
        ("/embed", {"images": [image]}),
        ("/items", {"images": [image], "labels": ["cat"]}),
        ("/search", {"image": image}),
    ):
        response = client.post(path, json=body)
        assert response.status_code == status, (path, response.text)
    assert item_count(client) == 0


@pytest.mark.parametrize(
    "data",
    [
        b"plain text, not an image",
        b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
        cats(1)[0].read_bytes()[:300],  # a truncated JPEG
        b"GIF89a" + b"\xff" * 20,
    ],
)
def test_bad_image_bytes_get_the_multipart_answer(client: TestClient, data: bytes) -> None:
    as_file = client.post("/embed", files=[("files", ("x.bin", data, "image/jpeg"))])
    assert as_file.status_code in (400, 415)
    as_json = client.post("/embed", json={"images": [{"data": base64.b64encode(data).decode()}]})
    assert as_json.status_code == as_file.status_code
    assert as_json.json()["detail"].split(":", 1)[1] == as_file.json()["detail"].split(":", 1)[1]


def test_json_image_limits_are_the_upload_limits(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", max_files=2, max_upload_mb=1.0)
    with TestClient(create_app(settings)) as client:
        one = {"data": b64(cats(1)[0])}
        assert client.post("/embed", json={"images": [one] * 3}).status_code == 422
        assert client.post("/items", json={"images": [one] * 3}).status_code == 422
        queries = [{"image": one}] * 3
        assert client.post("/search", json={"queries": queries}).status_code == 422
        huge = {"images": [{"data": "A" * (2 * 1024 * 1024)}]}  # over EMBED_MAX_UPLOAD_MB
        assert client.post("/embed", json=huge).status_code == 413
        assert item_count(client) == 0


def test_a_40_mb_base64_string_is_refused_before_it_is_decoded(client: TestClient) -> None:
    body = b'{"images": [{"data": "' + b"A" * (40 * 1024 * 1024) + b'"}]}'
    response = client.post("/items", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert item_count(client) == 0


def test_json_bodies_that_are_not_objects(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    for path in ("/embed", "/items"):
        assert client.post(path, content=b"[1, 2]", headers=headers).status_code == 400
        assert client.post(path, content=b"{", headers=headers).status_code == 400
        assert (
            client.post(path, content=b"x", headers={"content-type": "text/plain"}).status_code
            == 415
        )
        assert client.post(path, json={"images": []}).status_code == 422


def test_multipart_items_still_refuse_text_in_the_files_field(client: TestClient) -> None:
    response = client.post("/items", files={"files": (None, "not a file"), "labels": (None, "cat")})
    assert response.status_code == 400 and "must hold files" in response.text
    response = client.post(
        "/items", files=cifar_upload("cat", 0, 1), data={"labels": "cat", "colour": "red"}
    )
    assert response.status_code == 400 and "unknown form fields" in response.text
