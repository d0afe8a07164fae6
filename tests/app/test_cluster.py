import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import add


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
    assert -1 <= metrics["silhouette"] <= 1 and metrics["ari"] is not None
    auto = client.post("/cluster", json={"k": "auto"}).json()
    assert 2 <= auto["k"] <= 10
    only_cats = client.post("/cluster", json={"k": 2, "label": "cat"}).json()
    assert len(only_cats["assignments"]) == 10 and only_cats["metrics"]["purity"] == 1.0


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"k": 0}, 400),
        ({"k": -1}, 400),
        ({"k": 50}, 400),
        ({"k": "many"}, 422),
        ({"k": 2, "seed": -1}, 422),
    ],
)
def test_bad_cluster_requests(client: TestClient, body: dict, status: int) -> None:
    add(client, "cat", 0, 3)
    assert client.post("/cluster", json=body).status_code == status


def test_cluster_of_an_empty_store(client: TestClient) -> None:
    assert client.post("/cluster", json={"k": 2}).status_code == 400
