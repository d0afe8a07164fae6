"""``Idempotency-Key`` on ``POST /items``: a retry gets the first answer without a second
write; the same key with another request is 422; a key is a short printable token."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.app.conftest import cifar_upload, item_count


def test_a_retry_gets_the_first_answer_and_writes_nothing(client: TestClient) -> None:
    files = cifar_upload("cat", 0, 2)
    headers = {"Idempotency-Key": "order-17/attempt"}
    first = client.post("/items", files=files, data={"labels": "cat"}, headers=headers)
    assert first.status_code == 201, first.text
    retry = client.post("/items", files=files, data={"labels": "cat"}, headers=headers)
    assert retry.status_code == 201 and retry.json() == first.json()
    assert item_count(client) == 2
    # answered as the first time even after the items changed
    client.delete(f"/items/{first.json()['items'][0]['id']}")
    assert client.post("/items", files=files, data={"labels": "cat"}, headers=headers).json() == (
        first.json()
    )
    assert item_count(client) == 1


def test_the_same_key_with_another_request_is_refused(client: TestClient) -> None:
    headers = {"Idempotency-Key": "k-1"}
    client.post("/items", files=cifar_upload("cat", 0, 1), data={"labels": "cat"}, headers=headers)
    for files, labels in ((cifar_upload("cat", 1, 1), "cat"), (cifar_upload("cat", 0, 1), "bird")):
        response = client.post("/items", files=files, data={"labels": labels}, headers=headers)
        assert response.status_code == 422 and "different request" in response.json()["detail"]
    assert item_count(client) == 1


def test_without_a_key_or_with_another_key_every_request_writes(client: TestClient) -> None:
    files = cifar_upload("bird", 0, 1)
    client.post("/items", files=files)
    client.post("/items", files=files)
    client.post("/items", files=files, headers={"Idempotency-Key": "a"})
    client.post("/items", files=files, headers={"Idempotency-Key": "b"})
    assert item_count(client) == 4


def test_keys_must_be_short_printable_tokens(client: TestClient) -> None:
    for key in (b"has space", b"x" * 256, b"tab\there", "é".encode()):
        response = client.post(
            "/items", files=cifar_upload("cat", 0, 1), headers={"Idempotency-Key": key}
        )
        assert response.status_code == 422, key
    assert item_count(client) == 0
