import json

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import add, cifar_upload, item_count
from tests.conftest import image_bytes


def test_add_list_get_delete(client: TestClient) -> None:
    files = cifar_upload("cat", 0, 2) + cifar_upload("bird", 0, 1)
    response = client.post(
        "/items",
        files=files,
        data={"labels": ["cat", "cat", "bird"], "metadata": json.dumps({"source": "test"})},
    )
    assert response.status_code == 201
    created = response.json()["items"]
    assert [i["label"] for i in created] == ["cat", "cat", "bird"]
    assert created[0]["filename"] == "0000.jpg"
    listing = client.get("/items", params={"label": "cat"}).json()
    assert listing["total"] == 2 and len(listing["items"]) == 2
    page = client.get("/items", params={"limit": 1, "offset": 1}).json()
    assert page["total"] == 3 and [i["id"] for i in page["items"]] == [created[1]["id"]]
    item = client.get(f"/items/{created[2]['id']}").json()
    assert item["label"] == "bird" and item["metadata"] == {"source": "test"}
    assert item["model_version"] == client.get("/model").json()["version"]
    assert len(item["image_hash"]) == 64
    assert client.delete(f"/items/{created[2]['id']}").status_code == 204
    assert client.get(f"/items/{created[2]['id']}").status_code == 404
    assert client.delete(f"/items/{created[2]['id']}").status_code == 404
    assert item_count(client) == 2


def test_one_label_for_all_and_metadata_per_file(client: TestClient) -> None:
    response = client.post(
        "/items",
        files=cifar_upload("bird", 0, 2),
        data={"labels": "bird", "metadata": json.dumps([{"n": 1}, {"n": 2}])},
    )
    ids = [i["id"] for i in response.json()["items"]]
    assert [client.get(f"/items/{i}").json()["metadata"]["n"] for i in ids] == [1, 2]


def test_items_without_labels(client: TestClient) -> None:
    response = client.post("/items", files=cifar_upload("cat", 0, 1))
    assert response.status_code == 201 and response.json()["items"][0]["label"] is None


@pytest.mark.parametrize(
    ("data", "status"),
    [
        ({"labels": ["cat", "bird", "cat"]}, 400),  # three labels for two files
        ({"labels": "../etc"}, 422),  # the label pattern is in the schema
        ({"labels": ""}, 422),
        ({"labels": "x" * 65}, 422),
        ({"labels": "cat", "metadata": "{not json"}, 400),
        ({"labels": "cat", "metadata": "[1, 2]"}, 400),
        ({"labels": "cat", "metadata": json.dumps({"a": "x" * 20000})}, 400),
    ],
)
def test_bad_fields_change_nothing(client: TestClient, data: dict, status: int) -> None:
    response = client.post("/items", files=cifar_upload("cat", 0, 2), data=data)
    assert response.status_code == status, response.text
    assert "detail" in response.json()
    assert item_count(client) == 0


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"", 400),
        (b"hello, I am text", 415),
        (b"%PDF-1.4\n%...", 415),
        (image_bytes("PNG")[:50], 400),
        (image_bytes("TIFF"), 415),
    ],
)
def test_bad_images_change_nothing(client: TestClient, payload: bytes, status: int) -> None:
    files = [*cifar_upload("cat", 0, 1), ("files", ("evil.jpg", payload, "image/jpeg"))]
    response = client.post("/items", files=files, data={"labels": "cat"})
    assert response.status_code == status, response.text
    assert item_count(client) == 0


def test_limits(client: TestClient) -> None:
    too_many = cifar_upload("cat", 0, 65)
    assert client.post("/items", files=too_many, data={"labels": "cat"}).status_code == 400
    huge = [("files", ("big.png", b"\0" * (33 * 1024 * 1024), "image/png"))]
    assert client.post("/items", files=huge, data={"labels": "cat"}).status_code == 413
    assert item_count(client) == 0


def test_list_parameters_are_validated(client: TestClient) -> None:
    assert client.get("/items", params={"limit": 0}).status_code == 422
    assert client.get("/items", params={"offset": -1}).status_code == 422
    assert client.get("/items/0").status_code == 422  # neither an item id nor an external id
    assert client.get("/items/-1").status_code == 422
    assert client.get("/items/abc").status_code == 404  # an external id nobody gave


def test_hostile_filenames_are_display_only(client: TestClient) -> None:
    add(client, "cat", 0, 1)
    files = [("files", ("../../etc/passwd.jpg", cifar_upload("cat", 1, 1)[0][1][1], "image/jpeg"))]
    created = client.post("/items", files=files, data={"labels": "cat"}).json()["items"][0]
    assert created["filename"] == "passwd.jpg"


@pytest.mark.parametrize(("fmt", "media_type"), [("AVIF", "image/avif"), ("HEIF", "image/heic")])
def test_phone_photo_formats_are_stored_and_served_back(
    client: TestClient, fmt: str, media_type: str
) -> None:
    data = image_bytes(fmt, size=(64, 48))
    response = client.post("/items", files={"files": ("phone.img", data)}, data={"labels": "cat"})
    assert response.status_code == 201, response.text
    item_id = response.json()["items"][0]["id"]
    image = client.get(f"/items/{item_id}/image")
    assert image.headers["content-type"] == media_type and image.content == data
    vector = client.post("/embed", files={"files": ("phone.img", data)}).json()
    assert len(vector["embeddings"][0]["vector"]) == 128
