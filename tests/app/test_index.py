import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.store.index import IndexPolicy, VectorIndex
from model.data import discover, load
from model.embedding import Embedder
from tests.app.conftest import add, make_settings
from tests.app.test_restart import search_ids
from tests.conftest import DEFAULT_MODEL


@pytest.fixture(scope="module")
def real_vectors(cifar: Path) -> np.ndarray:
    """Embeddings of 3,000 real CIFAR-10 images (all ten classes) by the shipped model."""
    embedder = Embedder.from_dir(DEFAULT_MODEL)
    samples = discover([cifar], max_per_class=300, seed=3)
    images = load(samples, embedder.config.input_size, sorted(p.name for p in cifar.iterdir()))
    return embedder.embed_tensors(images.images)


def recall_at_10(exact: VectorIndex, approx: VectorIndex, queries: np.ndarray) -> float:
    _, truth = exact.search(queries, 10)
    _, found = approx.search(queries, 10)
    return float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)]))


def test_ivf_recall_on_real_embeddings(real_vectors: np.ndarray) -> None:
    ids = np.arange(1, len(real_vectors) + 1)
    queries, gallery, gallery_ids = real_vectors[:200], real_vectors[200:], ids[200:]
    exact = VectorIndex.build("v", gallery_ids, gallery, IndexPolicy(kind="flat"))
    approx = VectorIndex.build("v", gallery_ids, gallery, IndexPolicy(kind="ivf"))
    assert approx.kind == "ivf" and exact.kind == "flat"
    assert approx.nprobe == 32  # the service's default, which this test is about
    recall = recall_at_10(exact, approx, queries)
    print(f"IVF recall@10 on real embeddings at nprobe {approx.nprobe}: {recall:.3f}")
    # 1.000 here; 16 of the 71 lists gave 0.966, too near 0.95 to hold where FAISS's k-means
    # rounds differently (another CPU's SIMD)
    assert recall >= 0.95


def test_a_selective_filter_on_an_ivf_index_still_gets_k_exact_results(
    real_vectors: np.ndarray,
) -> None:
    """Few allowed ids may sit in lists the probe skips; they are compared exactly."""
    ids = np.arange(1, len(real_vectors) + 1)
    approx = VectorIndex.build("v", ids, real_vectors, IndexPolicy(kind="ivf", nprobe=1))
    allowed = ids[::150]  # 20 ids scattered over the lists, one being deleted
    approx.remove(allowed[:1])
    queries = real_vectors[:5]
    scores, found = approx.search(queries, 10, allowed)
    among = real_vectors[allowed[1:] - 1]
    expected = allowed[1:][np.argsort(-(queries @ among.T), axis=1, kind="stable")[:, :10]]
    np.testing.assert_array_equal(found, expected)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    _, few = approx.search(queries[:1], 30, allowed)  # more wanted than allowed: -1 pads
    assert list(few[0][19:]) == [-1] * 11 and -1 not in few[0][:19]


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_remove_filter_and_save_load(kind: str, real_vectors: np.ndarray, tmp_path: Path) -> None:
    vectors = real_vectors[:800]
    ids = np.arange(1, 801)
    policy = IndexPolicy(kind=kind)  # type: ignore[arg-type]
    index = VectorIndex.build("v1", ids, vectors, policy)
    _, found = index.search(vectors[:1], 1)
    assert found[0, 0] == 1
    np.testing.assert_allclose(index.vector(2), vectors[1], atol=1e-6)
    index.remove(np.array([1]))
    _, found = index.search(vectors[:1], 5)
    assert 1 not in found[0] and len(index) == 799
    assert index.vector(1) is None
    allowed = np.array([10, 20, 30])
    _, found = index.search(vectors[:1], 5, allowed)
    assert set(found[0]) - {-1} <= {10, 20, 30}
    index.save(tmp_path, generation=7)
    loaded = VectorIndex.load(tmp_path, "v1", vectors.shape[1], 7, policy)
    assert loaded is not None and loaded.kind == kind and len(loaded) == 799
    np.testing.assert_allclose(loaded.vector(2), vectors[1], atol=1e-6)
    assert VectorIndex.load(tmp_path, "v1", vectors.shape[1], 8, policy) is None


def test_service_switches_index_kind_with_the_item_count(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, ann_threshold=50)
    with TestClient(create_app(settings)) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        ids = add(client, "cat", 0, 30) + add(client, "bird", 0, 30)
        assert services.runtime.snapshot.index.kind == "ivf"
        body = client.post("/search", json={"id": ids[0], "k": 5}).json()
        assert len(body["neighbors"]) == 5
        for item_id in ids[:15]:
            client.delete(f"/items/{item_id}")
        assert services.runtime.snapshot.index.kind == "ivf"  # 45: not yet 10 % below
        client.delete(f"/items/{ids[15]}")
        assert services.runtime.snapshot.index.kind == "flat"
        assert len(services.runtime.snapshot.index) == 44


def test_auto_policy_switches_back_to_exact_only_well_below_the_threshold() -> None:
    policy = IndexPolicy("auto", ann_threshold=100)
    assert policy.kind_for(99) == "flat" and policy.kind_for(100) == "ivf"
    assert policy.kind_for(99, current="ivf") == "ivf"
    assert policy.kind_for(90, current="ivf") == "ivf"
    assert policy.kind_for(89, current="ivf") == "flat"
    assert policy.kind_for(99, current="flat") == "flat"
    assert IndexPolicy("flat").kind_for(10**9, current="ivf") == "flat"


def test_hovering_at_the_threshold_does_not_rebuild_on_every_write(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, ann_threshold=40)
    with TestClient(create_app(settings)) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        ids = add(client, "cat", 0, 40)
        index = services.runtime.snapshot.index
        assert index.kind == "ivf"
        for n in range(3):  # 39, 40, 39, 40, ... items
            assert client.delete(f"/items/{ids[n]}").status_code == 204
            add(client, "bird", n, 1)
        assert services.runtime.snapshot.index is index  # the same index, updated in place


def test_a_saved_index_holds_exactly_the_generation_it_is_labelled_with(tmp_path: Path) -> None:
    """Saving at shutdown waits for a write that has committed to the database but not yet
    reached the index."""
    settings = make_settings(tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        services = client.app.state.services  # type: ignore[attr-defined]
        add(client, "cat", 0, 3)
        index = services.runtime.snapshot.index
        in_write, release = threading.Event(), threading.Event()
        index_add = index.add

        def slow_add(ids: np.ndarray, vectors: np.ndarray) -> None:
            in_write.set()  # the database has committed the new item
            release.wait(30)
            index_add(ids, vectors)

        index.add = slow_add
        with ThreadPoolExecutor(2) as pool:
            write = pool.submit(add, client, "bird", 0, 1)
            assert in_write.wait(30)
            save = pool.submit(services.models.save_index)
            time.sleep(0.5)
            release.set()
            write.result(timeout=30)
            save.result(timeout=30)
        version, generation = index.version, services.db.generation()
        saved = VectorIndex.load(tmp_path / "data" / "index", version, index.dim, generation)
        assert saved is not None and len(saved) == 4


# The embedded store's saved FAISS index, through the app


def test_damaged_index_is_rebuilt_from_the_database(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as client:
        add(client, "cat", 0, 5)
        before = search_ids(client)
    for path in (tmp_path / "index").glob("*.faiss"):
        path.write_bytes(b"garbage")
    with TestClient(create_app(make_settings(tmp_path))) as client:
        assert search_ids(client) == before


def test_stale_index_is_rebuilt(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as client:
        add(client, "cat", 0, 3)
    saved = {p.name: p.read_bytes() for p in (tmp_path / "index").iterdir()}
    with TestClient(create_app(make_settings(tmp_path))) as client:
        add(client, "bird", 0, 3)
    for name, data in saved.items():  # put back the copy from before the birds
        (tmp_path / "index" / name).write_bytes(data)
    with TestClient(create_app(make_settings(tmp_path))) as client:
        assert len(search_ids(client)) == 6
