import base64

import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import add, cifar_upload
from tests.conftest import CIFAR, held_out


@pytest.fixture
def stocked(client: TestClient) -> TestClient:
    add(client, "cat", 0, 8)
    add(client, "bird", 0, 8)
    return client


def test_search_by_image(stocked: TestClient) -> None:
    query = cifar_upload("cat", 100, 1)[0][1]
    response = stocked.post("/search", files={"file": query}, data={"k": "5"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["neighbors"]) == 5
    scores = [n["score"] for n in body["neighbors"]]
    assert scores == sorted(scores, reverse=True)
    assert body["prediction"]["label"] in ("cat", "bird")
    assert body["model_version"] == stocked.get("/model").json()["version"]


def test_search_predicts_the_label_of_images_the_model_never_saw(stocked: TestClient) -> None:
    outcomes = []
    for label in ("cat", "bird"):
        for path in held_out(CIFAR, label, 10):
            file = (path.name, path.read_bytes(), "image/jpeg")
            body = stocked.post("/search", files={"file": file}, data={"k": "5"}).json()
            outcomes.append(body["prediction"]["label"] == label)
    # the shipped model's held-out precision@1 is about 0.95; 16 stored images vote here
    assert sum(outcomes) >= 17, outcomes


def test_search_by_stored_id_leaves_the_item_out(stocked: TestClient) -> None:
    body = stocked.post("/search", json={"id": 1, "k": 3}).json()
    assert len(body["neighbors"]) == 3 and 1 not in [n["id"] for n in body["neighbors"]]


def test_identical_image_is_its_own_nearest_neighbour(stocked: TestClient) -> None:
    query = cifar_upload("bird", 3, 1)[0][1]
    top = stocked.post("/search", files={"file": query}, data={"k": "1"}).json()["neighbors"][0]
    assert top["id"] == 12 and top["score"] == pytest.approx(1.0, abs=1e-3)


def test_search_by_vector_with_label_filter(stocked: TestClient) -> None:
    vector = stocked.post("/embed", files=cifar_upload("cat", 0, 1)).json()["embeddings"][0]
    body = stocked.post(
        "/search", json={"vector": vector["vector"], "k": 4, "label": "bird"}
    ).json()
    assert len(body["neighbors"]) == 4 and {n["label"] for n in body["neighbors"]} == {"bird"}
    assert stocked.post("/search", json={"id": 1, "label": "dog"}).json()["neighbors"] == []


def test_k_larger_than_the_store_returns_everything(stocked: TestClient) -> None:
    assert len(stocked.post("/search", json={"id": 1, "k": 1000}).json()["neighbors"]) == 15


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"id": 1, "k": 0}, 422),
        ({"id": 1, "k": -3}, 422),
        ({"id": 1, "k": 10**9}, 422),
        ({"id": 99999}, 404),
        ({"vector": [0.1] * 5}, 422),  # the active model's length is in the schema
        ({"vector": [0.0] * 128}, 400),
        ({}, 422),  # exactly one of id and vector
        ({"id": 1, "vector": [0.1] * 128}, 422),
        ({"id": None}, 422),
        ({"id": True}, 422),  # JSON bodies are strict
        ({"vector": [True] * 128}, 422),
        ({"id": 1, "extra": True}, 422),
        ({"id": "one"}, 422),
    ],
)
def test_bad_queries(stocked: TestClient, body: dict, status: int) -> None:
    assert stocked.post("/search", json=body).status_code == status


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        ({}, ["body"], "give one of 'id', 'vector' and 'image'"),
        ({"id": 1, "vector": [0.1]}, ["body"], "not ['id', 'vector']"),
        ({"vector": None}, ["body"], "'vector' must not be null"),
        ({"id": 1, "k": 0}, ["body", "k"], "greater than or equal to 1"),
    ],
)
def test_query_errors_read_like_fastapis_own(
    stocked: TestClient, body: dict, loc: list, message: str
) -> None:
    """The route parses its body itself; its 422s still say where, under ``body``, and
    carry no links to pydantic's documentation, as those of a declared body do."""
    response = stocked.post("/search", json=body)
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == loc and message in error["msg"] and "url" not in error


def test_form_field_errors_are_located_under_body(stocked: TestClient) -> None:
    response = stocked.post(
        "/search", files={"file": cifar_upload("cat", 0, 1)[0][1]}, data={"k": "x"}
    )
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "k"] and "url" not in error


def test_nan_vector_is_refused(stocked: TestClient) -> None:
    raw = '{"vector": [' + ", ".join(["NaN"] * 128) + "]}"
    response = stocked.post("/search", content=raw, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422)


def test_bad_content(stocked: TestClient) -> None:
    assert (
        stocked.post("/search", content=b"x", headers={"content-type": "text/plain"}).status_code
        == 415
    )
    assert (
        stocked.post(
            "/search", content=b"{", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    assert stocked.post("/search", files={"other": ("a.jpg", b"x")}).status_code == 400
    assert stocked.post("/search", files={"file": ("a.jpg", b"nope")}).status_code == 415
    bad_k = stocked.post(
        "/search", files={"file": cifar_upload("cat", 0, 1)[0][1]}, data={"k": "x"}
    )
    assert bad_k.status_code == 422


def test_batch_search_by_images_answers_each_in_order(stocked: TestClient) -> None:
    queries = cifar_upload("cat", 100, 2) + cifar_upload("bird", 100, 2)
    response = stocked.post("/search", files=queries, data={"k": "3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["results"]) == 4 and body["model_version"]
    for (_, file), result in zip(queries, body["results"], strict=True):
        alone = stocked.post("/search", files={"file": file}, data={"k": "3"}).json()
        assert result["neighbors"] == alone["neighbors"]
        assert result["prediction"] == alone["prediction"]


def test_batch_search_mixes_ids_vectors_and_images(stocked: TestClient) -> None:
    vector = stocked.get("/items/3", params={"include": "vector"}).json()["vector"]
    image = base64.b64encode(cifar_upload("bird", 2, 1)[0][1][1]).decode()
    queries = [{"id": 3}, {"vector": vector}, {"image": {"data": image}}, {"id": 9}]
    response = stocked.post("/search", json={"queries": queries, "k": 4, "label": "cat"})
    assert response.status_code == 200, response.text
    by_id, by_vector, by_image, bird = response.json()["results"]
    assert 3 not in [n["id"] for n in by_id["neighbors"]]  # a stored item leaves itself out
    assert by_vector["neighbors"][0]["id"] == 3  # ... a vector query does not
    assert [n["id"] for n in by_vector["neighbors"][1:]] == [
        n["id"] for n in by_id["neighbors"][:3]
    ]
    for result in (by_id, by_vector, by_image, bird):
        assert len(result["neighbors"]) == 4
        assert {n["label"] for n in result["neighbors"]} == {"cat"}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"queries": []}, 422),
        ({"queries": [{"id": 1}] * 257}, 422),
        ({"queries": [{"id": 1}, {}]}, 422),
        ({"queries": [{"id": 1}, {"vector": [0.1] * 5}]}, 422),
        ({"queries": [{"id": 1}, {"id": 99999}]}, 404),
        ({"queries": [{"id": 1}], "id": 2}, 422),
        ({"queries": {"id": 1}}, 422),
    ],
)
def test_bad_batch_queries(stocked: TestClient, body: dict, status: int) -> None:
    assert stocked.post("/search", json=body).status_code == status


def test_a_file_given_with_files_is_the_first_query(stocked: TestClient) -> None:
    first, second = cifar_upload("cat", 0, 1)[0][1], cifar_upload("bird", 0, 1)[0][1]
    response = stocked.post("/search", files=[("file", first), ("files", second)])
    assert response.status_code == 200, response.text
    nearest = [r["neighbors"][0]["filename"] for r in response.json()["results"]]
    assert nearest == [first[0], second[0]]
    assert stocked.post("/search", files={"file": (None, "text")}).status_code == 400
