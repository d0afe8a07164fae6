"""Training jobs through the API; each job trains in its own process."""

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services.archives import ClassFolderArchive
from app.services.training import TRAINING
from tests.app.conftest import add, make_settings, zipped
from tests.conftest import CIFAR, DEFAULT_MODEL

pytestmark = pytest.mark.slow


def wait_for(client: TestClient, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/train/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def class_folders(root: Path, per_class: int = 12) -> Path:
    for label in ("cat", "bird"):
        (root / label).mkdir(parents=True)
        for path in sorted((CIFAR / label).iterdir())[:per_class]:
            (root / label / path.name).write_bytes(path.read_bytes())
    return root


def test_train_on_items_then_activate(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    add(client, "cat", 0, 16)
    add(client, "bird", 0, 16)
    before = client.get("/model").json()["version"]
    # The job's final status must be written while its claim is still held: with the claim
    # free first, a status poll in the gap failed a job that had succeeded, as orphaned.
    jobs = client.app.state.services.jobs  # type: ignore[attr-defined]
    claimed_when_finished: list[bool] = []
    update_job = jobs.db.update_job

    def recording_update_job(job_id: str, **fields: object) -> None:
        if fields.get("status") in ("succeeded", "failed", "cancelled"):
            claimed_when_finished.append(jobs.db.claimed(TRAINING))
        update_job(job_id, **fields)

    monkeypatch.setattr(jobs.db, "update_job", recording_update_job)
    response = client.post(
        "/train",
        json={"dataset": {"source": "items"}, "epochs": 1, "batch_size": 16, "activate": "always"},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert client.post("/train", json={"epochs": 1}).status_code == 409
    job = wait_for(client, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert claimed_when_finished == [True]
    assert job["history"][0]["epoch"] == 1 and "val_precision_at_1" in job["history"][0]
    metrics = job["metrics"]  # precision@1 is a share of the held-out queries
    hits = metrics["val_precision_at_1"] * metrics["val_queries"]
    assert metrics["val_queries"] > 0 and hits == pytest.approx(round(hits), abs=1e-6)
    assert metrics["baseline"]["version"] == before
    int8 = job["metrics"]["int8"]  # the new model was calibrated and measured for int8
    assert int8["calibration_images"] > 0 and set(int8["deltas"]) >= {"precision_at_1", "purity"}
    assert job["activated"] is True
    jobs_dir = jobs.jobs_dir
    assert not (jobs_dir / job_id / "model").exists()  # stored once, as a model version
    active = client.get("/model").json()
    assert active["version"] == job["model_version"] != before
    assert active["int8"] == int8
    assert client.post("/search", json={"id": 1, "k": 40}).json()["neighbors"].__len__() == 31
    assert [j["job_id"] for j in client.get("/train").json()["jobs"]] == [job_id]
    assert len(client.get("/models").json()["models"]) == 2


def test_cancel_a_running_job(client: TestClient) -> None:
    before = client.get("/model").json()["version"]
    add(client, "cat", 0, 16)
    add(client, "bird", 0, 16)
    job_id = client.post("/train", json={"epochs": 200, "batch_size": 16}).json()["job_id"]
    deadline = time.monotonic() + 120
    while not client.get(f"/train/{job_id}").json()["progress"].get("step"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    cancelled = client.delete(f"/train/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert client.get(f"/train/{job_id}").status_code == 404  # forgotten
    assert client.delete(f"/train/{job_id}").status_code == 404
    assert client.delete("/train/unknown").status_code == 404
    jobs = client.app.state.services.jobs  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while jobs._job_id is not None:  # the worker stops; its monitor ends
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert [m["version"] for m in client.get("/models").json()["models"]] == [before]


def test_too_few_labels(client: TestClient) -> None:
    add(client, "cat", 0, 4)
    assert client.post("/train", json={"epochs": 1}).status_code == 409  # the store lacks data


def test_directory_source_is_confined_to_the_roots(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "allowed" / "set")
    outside = class_folders(tmp_path / "outside")
    settings = make_settings(tmp_path / "data", train_roots=[tmp_path / "allowed"])
    with TestClient(create_app(settings)) as client:
        for path, status in (
            (str(outside), 403),
            (str(root / ".." / ".." / "outside"), 403),
            ("/etc", 403),
            (str(root / "missing"), 404),
            ("", 400),
        ):
            body = {"dataset": {"source": "directory", "path": path}, "epochs": 1}
            assert client.post("/train", json=body).status_code == status, path
        body = {"dataset": {"source": "directory", "path": str(root)}, "epochs": 1, "batch_size": 8}
        response = client.post("/train", json=body)
        assert response.status_code == 202
        assert wait_for(client, response.json()["job_id"])["status"] == "succeeded"


def test_a_cancel_after_the_worker_finished_keeps_the_model(
    client: TestClient, tmp_path: Path
) -> None:
    """The cancel raced the worker's successful exit: the finished model is kept."""
    jobs = client.app.state.services.jobs  # type: ignore[attr-defined]
    job_dir = jobs.jobs_dir / "late-cancel"
    shutil.copytree(DEFAULT_MODEL, job_dir / "model")
    options = {"epochs": 1, "activate": "never", "dataset": {"source": "items"}}
    jobs.db.add_job("late-cancel", options)
    jobs._cancel_requested = True
    outcome = jobs._finish("late-cancel", 0, job_dir, options, {"val_precision_at_1": 0.9}, {})
    assert outcome == {"status": "succeeded", "activated": 0}
    assert client.get("/train/late-cancel").json()["model_version"] is not None
    assert not (job_dir / "model").exists()


def test_archive_source(client: TestClient) -> None:
    entries = {
        f"set/{label}/{p.name}": p.read_bytes()
        for label in ("cat", "bird")
        for p in sorted((CIFAR / label).iterdir())[:10]
    }
    params = json.dumps({"epochs": 1, "batch_size": 8, "activate": "never"})
    response = client.post(
        "/train", files={"archive": ("set.zip", zipped(entries))}, data={"params": params}
    )
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["job_id"])
    assert job["status"] == "succeeded" and job["activated"] is False
    assert job["metrics"]["train_images"] + job["metrics"]["val_queries"] == 20


@pytest.mark.parametrize(
    "archive",
    [
        zipped({"../evil/x.jpg": b"x", "cat/a.jpg": b"x"}),
        zipped({"/abs/cat/x.jpg": b"x"}),
        zipped({"cat/a.jpg": b"x"}, link="bird/link.jpg"),
        zipped({"cat/bomb.jpg": b"\0" * 5_000_000, "bird/b.jpg": b"x"}),
        zipped({"flat.jpg": b"x"}),
        zipped({"bad label!/a.jpg": b"x", "bird/b.jpg": b"x"}),
        b"not a zip at all",
    ],
)
def test_hostile_archives_are_refused(client: TestClient, archive: bytes) -> None:
    response = client.post("/train", files={"archive": ("x.zip", archive)})
    assert response.status_code == 400, response.text
    assert client.get("/train").json()["jobs"] == []


def test_bad_train_parameters(client: TestClient) -> None:
    for body in (
        {"epochs": 0},
        {"lr": 5},
        {"mining": "hardest"},
        {"model_type": "octet"},
        {"dataset": {"source": "s3"}},
        {"unknown": 1},
    ):
        response = client.post("/train", json=body)
        assert response.status_code == 422, body
        assert all(error["loc"][0] == "body" for error in response.json()["detail"]), body
    assert client.post("/train", json={"embedding_dim": 64}).status_code == 409  # active: 128


def test_an_archive_is_extracted_outside_the_jobs_lock(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a large archive is extracted, the jobs lock is free (cancels and shutdown are not
    held up) and a second request is told at once that a job is running."""
    jobs = client.app.state.services.jobs  # type: ignore[attr-defined]
    extracting, release = threading.Event(), threading.Event()
    extract = ClassFolderArchive.extract

    def slow_extract(archive: ClassFolderArchive, target: Path) -> None:
        extracting.set()
        release.wait(30)
        extract(archive, target)

    monkeypatch.setattr(ClassFolderArchive, "extract", slow_extract)
    entries = {
        f"{label}/{p.name}": p.read_bytes()
        for label in ("cat", "bird")
        for p in sorted((CIFAR / label).iterdir())[:10]
    }
    params = json.dumps({"epochs": 1, "batch_size": 8, "activate": "never"})
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(
            client.post,
            "/train",
            files={"archive": ("set.zip", zipped(entries))},
            data={"params": params},
        )
        assert extracting.wait(30)
        assert jobs._lock.acquire(timeout=1)
        jobs._lock.release()
        assert client.post("/train", json={"epochs": 1}).status_code == 409
        release.set()
        response = first.result(timeout=60)
    assert response.status_code == 202, response.text
    assert wait_for(client, response.json()["job_id"])["status"] == "succeeded"


@pytest.mark.slow
def test_a_job_trains_as_two_processes_with_progress_and_cancel(tmp_path: Path) -> None:
    """EMBED_TRAIN_PROCS=2: the job runs under torchrun on this machine; its progress, its
    model and a cancel work as with one process."""
    with TestClient(create_app(make_settings(tmp_path / "data", train_procs=2))) as client:
        add(client, "cat", 0, 16)
        add(client, "bird", 0, 16)
        body = {"epochs": 2, "batch_size": 8, "activate": "never"}
        started = client.post("/train", json=body)
        assert started.status_code == 202, started.text
        job = wait_for(client, started.json()["job_id"])
        assert job["status"] == "succeeded", job["error"]
        assert [entry["epoch"] for entry in job["history"]] == [1, 2]
        assert job["progress"]["epoch"] == 2 and job["progress"]["steps"] >= 1
        assert job["metrics"]["processes"] == 2
        versions = {m["version"]: m for m in client.get("/models").json()["models"]}
        assert versions[job["model_version"]]["metrics"]["processes"] == 2

        second = client.post("/train", json={**body, "epochs": 50}).json()["job_id"]
        deadline = time.monotonic() + 120
        while client.get(f"/train/{second}").json()["progress"].get("step") is None:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert client.delete(f"/train/{second}").json()["status"] == "cancelled"
        deadline = time.monotonic() + 60  # both workers stop at their next step, together
        while (again := client.post("/train", json=body)).status_code == 409:
            assert time.monotonic() < deadline, again.text
            time.sleep(0.5)
        assert again.status_code == 202
