"""``Idempotency-Key`` on ``POST /items`` and ``POST /train``: a retry gets the first answer
without a second write; the same key with another request is 409; a key is a short
printable token."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import add, cifar_upload, item_count


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
        assert response.status_code == 409 and "different request" in response.json()["detail"]
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


@pytest.mark.slow
def test_a_retried_training_request_starts_one_job(client: TestClient) -> None:
    add(client, "cat", 0, 16)
    add(client, "bird", 0, 16)
    body = {"epochs": 200, "batch_size": 16}
    headers = {"Idempotency-Key": "retrain-1"}
    first = client.post("/train", json=body, headers=headers)
    assert first.status_code == 202, first.text
    job_id = first.json()["job_id"]
    retry = client.post("/train", json=body, headers=headers)  # not 409: the same job
    assert retry.status_code == 202 and retry.json()["job_id"] == job_id
    other = client.post("/train", json={**body, "epochs": 3}, headers=headers)
    assert other.status_code == 409
    assert client.post("/train", json=body).status_code == 409  # without the key: a job runs
    assert [job["job_id"] for job in client.get("/train").json()["jobs"]] == [job_id]
    assert client.delete(f"/train/{job_id}").status_code == 200
