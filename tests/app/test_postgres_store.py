"""The PostgreSQL store on a real PostgreSQL server with pgvector: migrations, claims, the
checks that keep several workers consistent, and the HNSW index against exact search."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest

from app.store.database import (
    Database,
    DatabaseUnavailable,
    ItemsWithoutVectors,
    NewItem,
    StaleModel,
)
from app.store.filters import ItemFilter
from app.store.index import IndexPolicy, VectorIndex
from app.store.postgres import MIGRATIONS, PostgresDatabase
from app.store.sqlite import SqliteDatabase
from tests.conftest import ROOT

DIM = 16


def unit_rows(rng: np.random.Generator, count: int) -> np.ndarray:
    rows = rng.standard_normal((count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def new_items(vectors: np.ndarray, labels: list[str]) -> list[NewItem]:
    return [
        NewItem(label, {"n": n}, f"{n}.png", f"hash{n}", "png", vector)
        for n, (vector, label) in enumerate(zip(vectors, labels, strict=True))
    ]


@pytest.fixture
def database(postgres_url: str) -> PostgresDatabase:
    db = PostgresDatabase(postgres_url)
    yield db  # type: ignore[misc]
    db.close()


def test_workers_starting_together_migrate_once(postgres_url: str) -> None:
    opened: list[PostgresDatabase] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        try:
            opened.append(PostgresDatabase(postgres_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(opened) == 4
    with psycopg.connect(postgres_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    for db in opened:
        db.close()


def test_a_schema_newer_than_the_service_is_refused(postgres_url: str) -> None:
    PostgresDatabase(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (99, 'later')")
    with pytest.raises(RuntimeError, match="newer than this service"):
        PostgresDatabase(postgres_url)


def test_an_unreachable_server_is_reported_without_its_password(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as caught:
        PostgresDatabase(f"postgresql://me:secret@/db?host={tmp_path}&port=1", wait_s=1)
    assert time.monotonic() - started < 20
    assert "secret" not in str(caught.value) and "unreachable after 1 s" in str(caught.value)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_claim_excludes_every_other_claim_of_its_name(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "postgres":
        url = request.getfixturevalue("postgres_url")
        db: Database = PostgresDatabase(url)
        other: Database = PostgresDatabase(url)  # another worker
    else:
        db = other = SqliteDatabase(tmp_path / "store.sqlite3")
    claim = db.claim("training")
    assert claim is not None
    assert other.claim("training") is None and other.claimed("training")
    assert db.claimed("training")
    activation = other.claim("activation")  # another name is free
    assert activation is not None
    claim.release()
    claim.release()  # a second release changes nothing
    assert not other.claimed("training")
    again = other.claim("training")
    assert again is not None and db.claim("training") is None
    again.release()
    activation.release()
    db.close()
    if other is not db:
        other.close()


def test_a_dead_workers_claim_is_released(database: PostgresDatabase, postgres_url: str) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from app.store.postgres import PostgresDatabase; "
            "claim = PostgresDatabase(sys.argv[1]).claim('training'); "
            "print('held' if claim else 'refused', flush=True); time.sleep(600)",
            postgres_url,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    assert database.claimed("training") and database.claim("training") is None
    holder.kill()
    holder.wait()
    deadline = time.monotonic() + 10
    while database.claimed("training"):
        assert time.monotonic() < deadline, "the dead worker's claim was never released"
        time.sleep(0.1)
    claim = database.claim("training")
    assert claim is not None
    claim.release()


def test_a_write_with_a_model_that_is_no_longer_active_is_refused(
    database: PostgresDatabase,
) -> None:
    rng = np.random.default_rng(0)
    database.activate_model("v1")
    (kept,) = database.add_items(new_items(unit_rows(rng, 1), ["cat"]), "v1")
    database.put_vectors("v2", [kept], unit_rows(rng, 1))
    database.activate_model("v2")  # another worker activated v2
    with pytest.raises(StaleModel):
        database.add_items(new_items(unit_rows(rng, 1), ["cat"]), "v1")
    assert database.count_items() == 1
    record = database.get_item(kept)
    assert record is not None
    with pytest.raises(StaleModel):
        database.replace_item(kept, new_items(unit_rows(rng, 1), ["bird"])[0], "v1")
    assert database.get_item(kept) == record


def test_an_activation_waits_for_vectors_of_every_item(database: PostgresDatabase) -> None:
    rng = np.random.default_rng(1)
    database.activate_model("v1")
    ids = database.add_items(new_items(unit_rows(rng, 3), ["cat", "cat", "bird"]), "v1")
    database.put_vectors("v2", ids[:2], unit_rows(rng, 2))
    with pytest.raises(ItemsWithoutVectors):  # the third item has no v2 vector
        database.activate_model("v2")
    assert database.get_state("active_model") == "v1"
    database.activate_model("v2", unreadable=[ids[2]])  # reported unreadable: it may lack one
    assert database.get_state("active_model") == "v2"
    # the previous version's vectors stay for workers that have not switched yet
    assert len(database.vector_ids("v1")) == 3
    database.put_vectors("v3", ids, unit_rows(rng, 3))
    database.activate_model("v3")
    assert len(database.vector_ids("v1")) == 0 and len(database.vector_ids("v2")) == 2


def test_hnsw_serves_above_the_threshold_and_finds_what_exact_search_finds(
    database: PostgresDatabase,
) -> None:
    rng = np.random.default_rng(2)
    count = 3000
    vectors = unit_rows(rng, count)
    labels = ["rare" if n % 100 == 0 else "common" for n in range(count)]  # 30 rare items
    database.activate_model("v1")
    ids = np.array(database.add_items(new_items(vectors, labels), "v1"))
    queries = unit_rows(rng, 20)
    exact = database.build_index("v1", DIM, IndexPolicy(ann_threshold=count + 1))
    assert exact.kind == "exact"
    hnsw = database.build_index("v1", DIM, IndexPolicy(ann_threshold=1000))
    assert hnsw.kind == "hnsw"
    _, exact_ids = database.nearest(exact, queries, 10, None)
    faiss = VectorIndex.build("v1", ids, vectors)
    _, faiss_ids = faiss.search(queries, 10)
    assert (exact_ids == faiss_ids).all()  # pgvector's exact scan is FAISS's flat search
    _, approximate = database.nearest(hnsw, queries, 10, None)
    recall = np.mean(
        [len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact_ids, strict=True)]
    )
    assert recall >= 0.9
    # a filter that keeps 1 % of the items still gets its 10 nearest (iterative scan)
    rare = ItemFilter.parse({"label": "rare"})
    _, exact_rare = database.nearest(exact, queries, 10, rare)
    _, hnsw_rare = database.nearest(hnsw, queries, 10, rare)
    assert (hnsw_rare >= 0).all() and (exact_rare >= 0).all()
    rare_ids = set(ids[np.array(labels) == "rare"].tolist())
    assert set(hnsw_rare.ravel().tolist()) <= rare_ids
    rare_recall = np.mean(
        [len(set(a) & set(e)) / 10 for a, e in zip(hnsw_rare, exact_rare, strict=True)]
    )
    assert rare_recall >= 0.9
    assert "vectors_hnsw_" in database.nearest_plan(hnsw, queries[0], 10, None)
    assert "vectors_hnsw_" not in database.nearest_plan(exact, queries[0], 10, None)
    # the index goes with its version
    database.put_vectors("v2", ids.tolist(), vectors)
    database.activate_model("v2")
    database.put_vectors("v3", ids.tolist(), vectors)
    database.activate_model("v3")
    with psycopg.connect(database.url) as conn:
        left = conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'vectors_hnsw%'")
        assert left.fetchone() == (0,)
