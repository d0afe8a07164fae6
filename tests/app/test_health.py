import gc
from pathlib import Path

from fastapi.testclient import TestClient

from app.main import GC_THRESHOLDS, create_app
from tests.app.conftest import add, make_settings


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_readiness_is_503_before_start_up(tmp_path: Path) -> None:
    client = TestClient(create_app(make_settings(tmp_path)))  # no lifespan: not started
    assert client.get("/readyz").status_code == 503
    assert client.get("/model").status_code == 503


def test_start_up_sets_the_serving_processs_collector_thresholds(tmp_path: Path) -> None:
    default = (700, 10, 10)
    gc.set_threshold(*default)
    try:
        with TestClient(create_app(make_settings(tmp_path))):
            assert gc.get_threshold() == GC_THRESHOLDS != default
    finally:
        gc.set_threshold(*default)


def test_metrics_report_requests_index_and_model(client: TestClient) -> None:
    add(client, "cat", 0, 3)
    client.get("/items")
    text = client.get("/metrics").text
    assert 'embed_http_requests_total{method="POST",route="/items",status="201"} 1.0' in text
    assert "embed_index_vectors 3.0" in text
    version = client.get("/model").json()["version"]
    assert f'embed_model_info{{version="{version}"}} 1.0' in text
    assert "embed_batch_size_bucket" in text and "embed_training_jobs" in text


def test_request_ids_are_returned(client: TestClient) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    assert len(client.get("/healthz").headers["x-request-id"]) == 32
