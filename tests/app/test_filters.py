"""Metadata and label filters on search, listing and clustering, checked against a
brute-force answer over a few hundred real images."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import STORES, cifar_upload, make_settings

LABELS = ("cat", "bird", "dog", "ship")
PER_LABEL = 60


def item_metadata(label: str, n: int) -> dict[str, Any]:
    return {
        "source": "cifar" if n % 3 else "web",
        "batch": n % 4,
        "reviewed": n % 5 == 0,
        "camera": {"make": "acme" if n % 2 else "zeta"},
        "note": None if n % 7 == 0 else "x",
    }


@pytest.fixture(scope="module", params=STORES)
def catalog(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, dict]]:
    """240 CIFAR-10 items of four labels with varied metadata, and every item's label,
    metadata and vector as the service exports them; in each store."""
    data_dir: Path = tmp_path_factory.mktemp("filters") / "data"
    url = server = None
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        url = server.new_database()
    with TestClient(create_app(make_settings(data_dir, database_url=url))) as client:
        for label in LABELS:
            for start in range(0, PER_LABEL, 30):
                files = cifar_upload(label, start, 30)
                meta = [item_metadata(label, start + n) for n in range(30)]
                response = client.post(
                    "/items", files=files, data={"labels": label, "metadata": json.dumps(meta)}
                )
                assert response.status_code == 201, response.text
        exported = [json.loads(line) for line in client.get("/vectors").text.splitlines()]
        items = client.get("/items", params={"limit": 1000}).json()["items"]
        truth = {
            "ids": np.array([row["id"] for row in exported]),
            "vectors": np.array([row["vector"] for row in exported], dtype=np.float32),
            "items": {item["id"]: item for item in items},
        }
        yield client, truth
    if server is not None:
        server.drop_database(url)


def matches(item: dict[str, Any], item_filter: dict[str, Any]) -> bool:
    """The filter's meaning, written plainly: every field has one of its values, of the
    same JSON kind."""
    for field, wanted in item_filter.items():
        values = wanted if isinstance(wanted, list) else [wanted]
        if field.startswith("metadata."):
            value: Any = item["metadata"]
            present = True
            for key in field.split(".")[1:]:
                if not isinstance(value, dict) or key not in value:
                    present = False
                    break
                value = value[key]
            if not present:
                return False
        else:
            value = item[field]
        if not any(type(value) is type(v) and value == v for v in values):
            return False
    return True


FILTERS = [
    {"label": "cat"},
    {"metadata.source": "web"},
    {"label": ["bird", "ship"], "metadata.batch": 2},
    {"metadata.reviewed": True},
    {"metadata.camera.make": "zeta", "label": "dog"},
    {"metadata.note": None},
    {"metadata.batch": [0, 3], "metadata.source": "cifar", "metadata.reviewed": False},
    {"label": "cat", "metadata.batch": 1, "metadata.reviewed": True},  # three items
]


@pytest.mark.parametrize("item_filter", FILTERS)
def test_filtered_search_is_the_brute_force_answer(
    catalog: tuple[TestClient, dict], item_filter: dict[str, Any]
) -> None:
    client, truth = catalog
    allowed = [i for i, item in truth["items"].items() if matches(item, item_filter)]
    assert allowed, "every filter here matches some items"
    rng = np.random.default_rng(len(json.dumps(item_filter)))
    for query in rng.normal(size=(3, truth["vectors"].shape[1])).astype(np.float32):
        query /= np.linalg.norm(query)
        body = {"vector": query.tolist(), "k": 10, "filter": item_filter}
        response = client.post("/search", json=body)
        assert response.status_code == 200, response.text
        got = [n["id"] for n in response.json()["neighbors"]]
        mask = np.isin(truth["ids"], allowed)
        scores = truth["vectors"][mask] @ query
        expected = truth["ids"][mask][np.argsort(-scores, kind="stable")][:10]
        assert len(got) == min(10, len(allowed))  # k results whenever k items match
        assert got == expected.tolist()


@pytest.mark.parametrize("item_filter", FILTERS)
def test_filtered_listing_and_clustering_cover_the_matching_items(
    catalog: tuple[TestClient, dict], item_filter: dict[str, Any]
) -> None:
    client, truth = catalog
    allowed = sorted(i for i, item in truth["items"].items() if matches(item, item_filter))
    listed = client.get("/items", params={"filter": json.dumps(item_filter), "limit": 1000})
    assert listed.status_code == 200, listed.text
    assert listed.json()["total"] == len(allowed)
    assert [item["id"] for item in listed.json()["items"]] == allowed
    k = min(2, len(allowed))
    clustered = client.post("/cluster", json={"k": k, "filter": item_filter}).json()
    assert clustered["items"] == len(allowed)
    assert sorted(a["id"] for a in clustered["assignments"]) == allowed


def test_a_filter_by_image_and_the_label_parameter_combine(
    catalog: tuple[TestClient, dict],
) -> None:
    client, truth = catalog
    query = cifar_upload("cat", 500, 1)[0][1]
    response = client.post(
        "/search",
        files={"file": query},
        data={"k": "5", "label": "cat", "filter": json.dumps({"metadata.source": "web"})},
    )
    assert response.status_code == 200, response.text
    for neighbor in response.json()["neighbors"]:
        item = truth["items"][neighbor["id"]]
        assert item["label"] == "cat" and item["metadata"]["source"] == "web"


def test_values_match_only_their_own_json_kind(catalog: tuple[TestClient, dict]) -> None:
    client, _ = catalog
    vector = [1.0] + [0.0] * 127

    def found(item_filter: dict[str, Any]) -> int:
        response = client.post("/search", json={"vector": vector, "k": 5, "filter": item_filter})
        assert response.status_code == 200, response.text
        return len(response.json()["neighbors"])

    assert found({"metadata.batch": 2}) == 5
    assert found({"metadata.batch": 2.0}) == 5  # a number is a number
    assert found({"metadata.batch": "2"}) == 0
    assert found({"metadata.reviewed": 1}) == 0  # true is not 1
    assert found({"metadata.reviewed": True}) == 5
    assert found({"metadata.missing": None}) == 0  # null matches a null, not an absence
    assert found({"label": 5}) == 0
    assert found({"label": None}) == 0  # every item here has a label


@pytest.mark.parametrize(
    "item_filter",
    [
        {"colour": "red"},  # unknown field
        {"metadata": "x"},  # no key
        {"metadata.a..b": 1},
        {"metadata.a/b": 1},
        {"metadata." + "k" * 65: 1},
        {"metadata.a.b.c.d.e": 1},  # too deep
        {"label": {"nested": 1}},  # not a scalar
        {"label": []},
        {"label": ["x"] * 101},
        {f"metadata.k{n}": n for n in range(17)},  # too many fields
        {"metadata.text": "x" * 1025},
        ["label", "cat"],  # not an object
    ],
)
def test_bad_filters_are_422(catalog: tuple[TestClient, dict], item_filter: Any) -> None:
    client, _ = catalog
    body = {"vector": [1.0] + [0.0] * 127, "filter": item_filter}
    assert client.post("/search", json=body).status_code == 422
    assert client.post("/cluster", json={"k": 2, "filter": item_filter}).status_code == 422
    listed = client.get("/items", params={"filter": json.dumps(item_filter)})
    assert listed.status_code == 422
    form = {"k": "3", "filter": json.dumps(item_filter)}
    query = cifar_upload("cat", 500, 1)[0][1]
    assert client.post("/search", files={"file": query}, data=form).status_code == 422


def test_a_filter_that_is_not_json_is_422(catalog: tuple[TestClient, dict]) -> None:
    client, _ = catalog
    assert client.get("/items", params={"filter": "{label"}).status_code == 422
    query = cifar_upload("cat", 500, 1)[0][1]
    response = client.post("/search", files={"file": query}, data={"filter": "{"})
    assert response.status_code == 422


def test_a_filter_matching_nothing_finds_nothing(catalog: tuple[TestClient, dict]) -> None:
    client, _ = catalog
    body = {"id": 1, "filter": {"metadata.source": "nowhere"}}
    assert client.post("/search", json=body).json()["neighbors"] == []
    assert client.post("/cluster", json={"k": 2, "filter": body["filter"]}).status_code == 409
