import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from model.checkpoint import save_model
from model.config import ModelConfig
from model.network import EmbeddingNet
from model.preprocessing import DEFAULT_MAX_PIXELS
from tests.app.conftest import add, cifar_upload, make_settings


def register_second_model(client: TestClient, tmp_path: Path) -> str:
    """A second real model (64-d, so a mix of two models could not go unnoticed)."""
    torch.manual_seed(1)
    net = EmbeddingNet(ModelConfig(embedding_dim=64, labels=("bird", "cat")))
    save_model(net, tmp_path / "second", metrics={"val_precision_at_1": 0.5})
    services = client.app.state.services  # type: ignore[attr-defined]
    return services.models.register(tmp_path / "second", "test").version


def test_active_model_description(client: TestClient) -> None:
    body = client.get("/model").json()
    assert body["backbone"] == "resnet18" and body["model_type"] == "triplet"
    assert body["embedding_dim"] == 128 and body["input_size"] == 64
    assert "val_precision_at_1" in body["metrics"]
    versions = client.get("/models").json()
    assert [m["active"] for m in versions["models"]] == [True]
    # the automatic backend is the fastest measured here, and GET /model says so
    selection = body["backend_selection"]
    rates = selection["images_per_second"]
    assert (
        selection["how"] in ("measured", "remembered") and selection["backend"] == body["backend"]
    )
    assert body["backend"] == max(rates, key=rates.get)
    assert body["int8"]["passes"] is True
    assert body["int8"]["queries"] == body["metrics"]["val_queries"] == 1039
    assert body["flip_tta"] is False


def test_backend_setting_chooses_the_backend(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", backend="torch-fp32")
    with TestClient(create_app(settings)) as client:
        assert client.get("/model").json()["backend"] == "torch-fp32"
        ids = add(client, "cat", 0, 2)
        query = cifar_upload("cat", 0, 1)[0][1]
        top = client.post("/search", files={"file": query}, data={"k": "1"}).json()["neighbors"]
        assert top[0]["id"] == ids[0] and top[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_activation_re_embeds_and_rollback_restores(client: TestClient, tmp_path: Path) -> None:
    ids = add(client, "cat", 0, 5) + add(client, "bird", 0, 5)
    default = client.get("/model").json()["version"]
    second = register_second_model(client, tmp_path)
    response = client.post(f"/models/{second}/activate", params={"wait": True})
    assert response.status_code == 200, response.text
    assert response.json()["reembedded"] == 10
    assert client.get("/model").json()["embedding_dim"] == 64
    body = client.post("/search", json={"id": ids[0], "k": 20}).json()
    assert body["model_version"] == second and len(body["neighbors"]) == 9
    vector = client.post("/embed", files=[("files", ("a.jpg", b"x"))])
    assert vector.status_code == 415
    assert client.get(f"/items/{ids[0]}").json()["model_version"] == second
    response = client.post(f"/models/{default}/activate")
    assert response.status_code == 202
    for _ in range(200):
        if client.get("/model").json()["version"] == default:
            break
        time.sleep(0.05)
    assert client.get("/model").json()["embedding_dim"] == 128
    assert client.post("/models/" + default + "/activate").json()["status"] == "active"
    listed = {m["version"]: m["active"] for m in client.get("/models").json()["models"]}
    assert listed == {default: True, second: False}


def test_unknown_version_is_404(client: TestClient) -> None:
    assert client.post("/models/nope/activate").status_code == 404


def test_items_added_during_activation_get_new_vectors(client: TestClient, tmp_path: Path) -> None:
    add(client, "cat", 0, 3)
    second = register_second_model(client, tmp_path)
    services = client.app.state.services  # type: ignore[attr-defined]
    original = services.models._embed_missing
    added: list[int] = []

    def add_during(embedder, version):  # type: ignore[no-untyped-def]
        if not added:
            added.extend(add(client, "bird", 0, 2))
        return original(embedder, version)

    services.models._embed_missing = add_during
    client.post(f"/models/{second}/activate", params={"wait": True})
    for item_id in added:
        body = client.post("/search", json={"id": item_id, "k": 10}).json()
        assert body["model_version"] == second and len(body["neighbors"]) == 4


def test_crash_during_activation_leaves_the_old_model(tmp_path: Path) -> None:
    from app.main import create_app
    from tests.app.conftest import make_settings

    settings = make_settings(tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        add(client, "cat", 0, 4)
        default = client.get("/model").json()["version"]
        second = register_second_model(client, tmp_path)
        services = client.app.state.services  # type: ignore[attr-defined]
        original = services.models._embed_missing

        def crash_midway(embedder, version):  # type: ignore[no-untyped-def]
            original(embedder, version)
            raise RuntimeError("simulated crash after re-embedding, before the swap")

        services.models._embed_missing = crash_midway
        with pytest.raises(RuntimeError, match="simulated crash"):
            client.post(f"/models/{second}/activate", params={"wait": True})
        assert client.get("/model").json()["version"] == default
    with TestClient(create_app(settings)) as client:
        assert client.get("/model").json()["version"] == default
        body = client.post("/search", json={"id": 1, "k": 5}).json()
        assert body["model_version"] == default and len(body["neighbors"]) == 3


def wait_until_idle(client: TestClient) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + 60
    while (models := client.get("/models").json())["activating"] is not None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return models  # type: ignore[no-any-return]


def hold_activations(client: TestClient) -> threading.Event:
    """Makes activations wait, once claimed, until the returned event is set."""
    services = client.app.state.services  # type: ignore[attr-defined]
    release = threading.Event()
    original = services.models._activate

    def held(version: str):  # type: ignore[no-untyped-def]
        release.wait(30)
        return original(version)

    services.models._activate = held
    return release


def test_an_activation_records_its_outcome_before_it_reads_as_finished(
    client: TestClient, tmp_path: Path
) -> None:
    """``GET /models`` never shows no activation running and no outcome of the last one."""
    add(client, "cat", 0, 2)
    second = register_second_model(client, tmp_path)
    models = client.app.state.services.models  # type: ignore[attr-defined]
    seen_at_release: list[tuple[str | None, dict]] = []  # type: ignore[type-arg]

    class WatchedLock:
        """The activation lock, noting what a reader would see when it is released."""

        def __init__(self, lock: threading.Lock) -> None:
            self.lock = lock

        def acquire(self, blocking: bool = True) -> bool:
            return self.lock.acquire(blocking)

        def release(self) -> None:
            seen_at_release.append((models.activating, dict(models.last_activation)))
            self.lock.release()

    models._activation_lock = WatchedLock(models._activation_lock)
    response = client.post(f"/models/{second}/activate", params={"wait": True})
    assert response.status_code == 200
    assert seen_at_release == [(None, response.json())]
    assert response.json()["status"] == "active"


def test_simultaneous_activations_get_one_202_and_409s(client: TestClient, tmp_path: Path) -> None:
    """The claim is taken before the route answers: never a 202 for an activation that then
    fails with a conflict in the background."""
    add(client, "cat", 0, 2)
    second = register_second_model(client, tmp_path)
    release = hold_activations(client)
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(lambda _: client.post(f"/models/{second}/activate").status_code, range(8))
        )
    assert sorted(codes) == [202] + [409] * 7
    listed = client.get("/models").json()
    assert listed["activating"] == second and listed["activation_progress"] is not None
    release.set()
    models = wait_until_idle(client)
    assert models["last_activation"]["status"] == "active"
    assert client.get("/model").json()["version"] == second


def test_a_damaged_model_is_a_409_and_a_failed_background_activation_is_listed(
    client: TestClient, tmp_path: Path
) -> None:
    add(client, "cat", 0, 2)
    default = client.get("/model").json()["version"]
    second = register_second_model(client, tmp_path)
    services = client.app.state.services  # type: ignore[attr-defined]
    weights = services.settings.data_dir / "models" / second / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    response = client.post(f"/models/{second}/activate", params={"wait": True})
    assert response.status_code == 409
    assert "cannot be loaded" in response.json()["detail"]
    assert client.post(f"/models/{second}/activate").status_code == 202
    failed = wait_until_idle(client)["last_activation"]
    assert failed["status"] == "failed" and failed["version"] == second
    assert "cannot be loaded" in failed["error"]
    assert client.get("/model").json()["version"] == default


def test_unreadable_stored_images_are_reported_not_counted(
    client: TestClient, tmp_path: Path
) -> None:
    ids = add(client, "cat", 0, 3)
    second = register_second_model(client, tmp_path)
    services = client.app.state.services  # type: ignore[attr-defined]
    record = services.db.get_item(ids[1])
    services.models.images.path(record.image_hash, record.image_ext).write_bytes(b"not an image")
    result = client.post(f"/models/{second}/activate", params={"wait": True}).json()
    assert result["reembedded"] == 2
    assert result["unreadable_items"] == 1 and result["unreadable_ids"] == [ids[1]]
    assert client.get("/models").json()["last_activation"]["unreadable_ids"] == [ids[1]]


def test_re_embedding_honours_the_configured_pixel_limit(tmp_path: Path) -> None:
    """An image that the configured limit admitted at upload, though it is over the default
    limit, is re-embedded at the next model switch rather than skipped as unreadable."""
    side = 6_500  # 42.25 MP: over the default 40 MP limit, under this service's 45 MP
    assert side * side > DEFAULT_MAX_PIXELS
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 150)).save(buffer, format="PNG")
    settings = make_settings(tmp_path / "data", max_image_pixels=45_000_000)
    with TestClient(create_app(settings)) as client:
        upload = ("files", ("large.png", buffer.getvalue(), "image/png"))
        added = client.post("/items", files=[upload], data={"labels": "cat"})
        assert added.status_code == 201, added.text
        second = register_second_model(client, tmp_path)
        result = client.post(f"/models/{second}/activate", params={"wait": True}).json()
        assert result["reembedded"] == 1 and result["unreadable_items"] == 0


def test_a_retried_activation_gets_its_first_answer(client: TestClient, tmp_path: Path) -> None:
    """With an Idempotency-Key, a retry while the activation it started still runs gets that
    activation's 202, not the 409 of a second request; another key gets the 409."""
    add(client, "cat", 0, 2)
    second = register_second_model(client, tmp_path)
    release = hold_activations(client)
    key = {"Idempotency-Key": "switch-to-second"}
    first = client.post(f"/models/{second}/activate", headers=key)
    assert first.status_code == 202
    retry = client.post(f"/models/{second}/activate", headers=key)
    assert retry.status_code == 202 and retry.json() == first.json()
    other = client.post(f"/models/{second}/activate", headers={"Idempotency-Key": "another"})
    assert other.status_code == 409
    waiting = client.post(f"/models/{second}/activate?wait=true", headers=key)
    assert waiting.status_code == 409  # the same key, another request
    release.set()
    wait_until_idle(client)
    assert client.get("/model").json()["version"] == second


def test_workers_registering_one_model_together_all_succeed(
    client: TestClient, tmp_path: Path
) -> None:
    """Workers starting together on shared storage copy the same model at once."""
    torch.manual_seed(2)
    net = EmbeddingNet(ModelConfig(embedding_dim=64, labels=("bird", "cat")))
    save_model(net, tmp_path / "third", metrics={})
    services = client.app.state.services  # type: ignore[attr-defined]
    barrier = threading.Barrier(4)

    def register() -> str:
        barrier.wait()
        return str(services.models.register(tmp_path / "third", "test").version)

    with ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(lambda _: register(), range(4)))
    assert len(set(versions)) == 1
    models_dir = services.models.models_dir
    assert sorted(p.name for p in models_dir.iterdir() if p.name.startswith(".")) == []
    assert (models_dir / versions[0] / "model.safetensors").is_file()
    assert [m["version"] for m in services.db.models()].count(versions[0]) == 1


def test_start_up_removes_staging_folders_a_crash_left(tmp_path: Path) -> None:
    """A model copy killed half-way leaves its staging folder; only old ones are swept,
    since a recent one may be another worker's copy in progress."""
    models_dir = tmp_path / "data" / "models"
    orphan, in_progress = models_dir / ".v1.crashed", models_dir / ".v1.copying"
    for folder in (orphan, in_progress):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half a copy")
    two_hours_ago = time.time() - 7200
    os.utime(orphan, (two_hours_ago, two_hours_ago))
    with TestClient(create_app(make_settings(tmp_path / "data"))) as client:
        assert client.get("/model").status_code == 200
    assert not orphan.exists()
    assert (in_progress / "model.safetensors").read_bytes() == b"half a copy"
