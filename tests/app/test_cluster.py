from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import add, make_settings


def test_cluster_with_k_and_auto(client: TestClient) -> None:
    add(client, "cat", 0, 10)
    add(client, "bird", 0, 10)
    body = client.post("/cluster", json={"k": 2, "seed": 1}).json()
    assert body["k"] == 2 and len(body["assignments"]) == 20
    assert sum(c["size"] for c in body["clusters"]) == 20
    for cluster in body["clusters"]:
        assert sum(cluster["label_counts"].values()) == cluster["size"]
        assert cluster["majority_label"] in ("cat", "bird")
    metrics = body["metrics"]
    assert metrics["purity"] >= 0.9 and metrics["nmi"] >= 0.5  # the model tells them apart
    assert metrics["silhouette"] > 0.2 and metrics["ari"] > 0.6  # compact, separate groups
    assert body["items"] == body["fitted_on"] == 20 and body["assignments_truncated"] is False
    auto = client.post("/cluster", json={"k": "auto"}).json()
    assert 2 <= auto["k"] <= 10
    only_cats = client.post("/cluster", json={"k": 2, "label": "cat"}).json()
    assert len(only_cats["assignments"]) == 10 and only_cats["metrics"]["purity"] == 1.0


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"k": 0}, 422),
        ({"k": -1}, 422),
        ({"k": 1001}, 422),  # EMBED_MAX_K
        ({"k": 50}, 409),  # more than the stored items
        ({"k": True}, 422),
        ({"k": "many"}, 422),
        ({"k": 2, "seed": -1}, 422),
        ({"k": 2, "limit": -1}, 422),
        ({"k": 2, "limit": 100_001}, 422),
    ],
)
def test_bad_cluster_requests(client: TestClient, body: dict, status: int) -> None:
    add(client, "cat", 0, 3)
    assert client.post("/cluster", json=body).status_code == status


def test_large_stores_are_clustered_on_a_sample_and_listed_in_part(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", cluster_sample=16)
    with TestClient(create_app(settings)) as client:
        ids = add(client, "cat", 0, 20) + add(client, "bird", 0, 20)
        request = {"k": 2, "seed": 3, "limit": 5, "projection": True}
        body = client.post("/cluster", json=request).json()
    assert body["items"] == 40 and body["fitted_on"] == 16
    assert sum(c["size"] for c in body["clusters"]) == 40  # every item is assigned
    assert body["metrics"]["purity"] >= 0.9
    assert [a["id"] for a in body["assignments"]] == ids[:5] and body["assignments_truncated"]
    assert [p["id"] for p in body["projection"]] == ids[:5]


def test_cluster_of_an_empty_store(client: TestClient) -> None:
    assert client.post("/cluster", json={"k": 2}).status_code == 409
