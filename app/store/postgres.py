"""The shared store: PostgreSQL with pgvector, for several workers and replicas.

Items, labels, metadata (``jsonb``), vectors per model version (pgvector ``vector``), model
versions, jobs and imports live in PostgreSQL; workers keep nothing of their own but their
model. An item row and its vector commit in one transaction; a commit returns only once
PostgreSQL has flushed it, so an acknowledged item survives a crash of either side.

The nearest-neighbour search runs in PostgreSQL (:class:`PgvectorIndex`): an exact scan
while a model version has fewer vectors than the policy's ``ann_threshold``, an HNSW index
(inner product, one partial index per version) above it, with pgvector's iterative scan so
that a filtered query still finds ``k`` matches. FAISS stays for k-means only.

The schema is created and migrated at start-up by :data:`MIGRATIONS`, under an advisory lock,
so that workers starting together migrate once. A server that cannot be reached raises
:class:`~app.store.database.DatabaseUnavailable` (the API answers 503).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import psycopg
from pgvector import Vector
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from app.store.database import (
    IMPORT_JSON,
    JOB_JSON,
    AlreadyDone,
    Claim,
    DatabaseUnavailable,
    ExternalIdTaken,
    IdempotencyKey,
    ItemRecord,
    ItemsWithoutVectors,
    KeyReused,
    NewItem,
    StaleModel,
    VectorPage,
    idempotency_expiry,
    now,
)
from app.store.filters import ItemFilter
from app.store.index import Index, IndexPolicy

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x656D6265  # pg_advisory_xact_lock key shared by every worker's start-up
MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE EXTENSION IF NOT EXISTS vector;
    CREATE TABLE items (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        label text,
        metadata jsonb NOT NULL DEFAULT '{}',
        filename text NOT NULL,
        image_hash text NOT NULL,
        image_ext text NOT NULL,
        created_at text NOT NULL,
        external_id text UNIQUE
    );
    CREATE INDEX items_label ON items (label);
    CREATE INDEX items_image_hash ON items (image_hash);
    CREATE INDEX items_metadata ON items USING gin (metadata jsonb_path_ops);
    CREATE TABLE vectors (
        model_version text NOT NULL,
        item_id bigint NOT NULL REFERENCES items (id) ON DELETE CASCADE,
        vector vector NOT NULL,
        PRIMARY KEY (model_version, item_id)
    );
    CREATE INDEX vectors_item ON vectors (item_id);
    CREATE TABLE models (
        version text PRIMARY KEY,
        path text NOT NULL,
        card jsonb NOT NULL,
        source text NOT NULL,
        created_at text NOT NULL
    );
    CREATE TABLE state (key text PRIMARY KEY, value text NOT NULL);
    CREATE TABLE idempotency (
        operation text NOT NULL,
        key text NOT NULL,
        fingerprint text NOT NULL,
        result jsonb NOT NULL,
        created_at text NOT NULL,
        PRIMARY KEY (operation, key)
    );
    CREATE TABLE imports (
        id text PRIMARY KEY,
        status text NOT NULL,
        filename text NOT NULL,
        total integer NOT NULL,
        added integer NOT NULL DEFAULT 0,
        failed integer NOT NULL DEFAULT 0,
        failures jsonb NOT NULL DEFAULT '[]',
        labels jsonb NOT NULL DEFAULT '{}',
        error text,
        created_at text NOT NULL,
        updated_at text NOT NULL
    );
    CREATE TABLE jobs (
        id text PRIMARY KEY,
        status text NOT NULL,
        request jsonb NOT NULL,
        progress jsonb NOT NULL DEFAULT '{}',
        history jsonb NOT NULL DEFAULT '[]',
        metrics jsonb NOT NULL DEFAULT '{}',
        model_version text,
        activated boolean NOT NULL DEFAULT false,
        error text,
        created_at text NOT NULL,
        updated_at text NOT NULL
    );
    """,
]
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")  # model versions named in DDL
COUNT_EVERY_S = 30.0  # how often a growing version's count is checked against the threshold
# memory for an HNSW build (its session only): a graph that does not fit is built far slower
# (1M 128-d vectors need about 1 GB)
HNSW_BUILD_MEMORY = "1GB"


def _item(row: dict[str, Any]) -> ItemRecord:
    return ItemRecord(
        id=row["id"],
        label=row["label"],
        metadata=row["metadata"],
        filename=row["filename"],
        image_hash=row["image_hash"],
        image_ext=row["image_ext"],
        created_at=row["created_at"],
        external_id=row["external_id"],
    )


def _vector(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32)


def _stacked(vectors: Sequence[Vector], dim: int) -> np.ndarray:
    """pgvector's values as one ``(n, dim)`` float32 array."""
    if not vectors:
        return np.zeros((0, dim), dtype=np.float32)
    return np.stack([v.to_numpy() for v in vectors]).astype(np.float32)


def hnsw_index_name(version: str) -> str:
    return "vectors_hnsw_" + hashlib.sha256(version.encode()).hexdigest()[:16]


class PgvectorIndex:
    """A snapshot's view of one model version's vectors in PostgreSQL. The vectors are
    written with their items, so ``add`` and ``remove`` have nothing to do; ``kind`` is
    ``hnsw`` once the version's HNSW index exists, else ``exact``."""

    def __init__(
        self,
        db: PostgresDatabase,
        version: str,
        dim: int,
        kind: Literal["exact", "hnsw"],
        ef_search: int = 100,
    ) -> None:
        self.db = db
        self._version = version
        self.dim = dim
        self._kind = kind
        self.ef_search = ef_search  # HNSW candidates per query (at least 2k are kept)
        self.counted_at = time.monotonic()

    @property
    def version(self) -> str:
        return self._version

    @property
    def kind(self) -> str:
        return self._kind

    def __len__(self) -> int:
        return self.db.count_vectors(self._version)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Nothing to do: the vectors committed with their items."""

    def remove(self, ids: np.ndarray) -> None:
        """Nothing to do: deleting an item deletes its vectors."""

    def vector(self, item_id: int) -> np.ndarray | None:
        return self.db.vector(self._version, item_id)

    def save(self, directory: Path, generation: int) -> None:
        """Nothing to save: the index is PostgreSQL's."""


class PostgresDatabase:
    shared = True  # several workers and replicas: each follows the active model

    def __init__(
        self, url: str, wait_s: float = 30.0, pool_size: int = 8, timeout_s: float = 10.0
    ) -> None:
        """Connects (retrying for up to ``wait_s`` while the server is not up yet), migrates
        the schema, and opens a pool of ``pool_size`` connections; ``timeout_s`` bounds the
        wait for a connection afterwards."""
        self.url = url
        self.timeout_s = timeout_s
        self._wait_for_server(wait_s)
        self._migrate()
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            configure=register_vector,
            check=ConnectionPool.check_connection,
            kwargs={"row_factory": dict_row},
            open=False,
        )
        self._pool.open(wait=True, timeout=timeout_s)
        self._hnsw_lock = threading.Lock()
        self._building: set[str] = set()

    def _wait_for_server(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=5).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() >= deadline:
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                    raise DatabaseUnavailable(
                        f"PostgreSQL at {_redacted(self.url)} is unreachable after "
                        f"{wait_s:.0f} s: {reason}"
                    ) from exc
                log.warning("PostgreSQL is not reachable yet (%s); retrying", exc)
                time.sleep(1.0)

    def _migrate(self) -> None:
        """Applies the migrations this database lacks, in order, in one transaction under an
        advisory lock: a worker starting meanwhile waits, then finds the schema current."""
        with psycopg.connect(self.url) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version integer PRIMARY KEY, applied_at text NOT NULL)"
            )
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
            applied = row[0] or 0 if row else 0
            if applied > len(MIGRATIONS):
                raise RuntimeError(
                    f"the database schema is version {applied}, newer than this service "
                    f"({len(MIGRATIONS)}): upgrade the service"
                )
            for number, statement in enumerate(MIGRATIONS[applied:], start=applied + 1):
                conn.execute(statement.encode())
                conn.execute(
                    "INSERT INTO schema_migrations(version, applied_at) VALUES (%s, %s)",
                    (number, now()),
                )
                log.info("database schema migrated to version %d", number)

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A pooled connection in a transaction, committed when the block ends; a server
        that is down or a connection lost on the way is :class:`DatabaseUnavailable`."""
        try:
            with self._pool.connection(timeout=self.timeout_s) as conn:
                yield conn
        except PoolTimeout as exc:
            raise DatabaseUnavailable("the database is unreachable") from exc
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"the database is unreachable: {exc}") from exc

    def _connect(self, **options: Any) -> psycopg.Connection[Any]:
        """A connection of its own, outside the pool."""
        try:
            return psycopg.connect(self.url, connect_timeout=5, **options)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"the database is unreachable: {exc}") from exc

    # --- claims (advisory locks: a process that dies releases its claims) ----------------

    def claim(self, name: str) -> Claim | None:
        """Holds the advisory lock of ``name`` on a connection of its own for as long as the
        claim lasts: if this process dies, PostgreSQL ends the session and the lock with it."""
        conn = self._connect(autocommit=True)
        try:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 1))", (name,)
            ).fetchone()
        except psycopg.Error:
            conn.close()
            raise
        if not (row and row[0]):
            conn.close()
            return None

        def release() -> None:
            # unlocked before closing: a closed session's locks go only when its server
            # process has exited, which a claim right after this one could still see
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 1))", (name,))
            conn.close()

        return Claim(name, release)

    def claimed(self, name: str) -> bool:
        """Whether any process holds ``name`` (this one included)."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 1)) AS free", (name,)
            ).fetchone()
            assert row is not None
            if row["free"]:
                conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 1))", (name,))
            return not row["free"]

    def _query(self, query: Any, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._transaction() as conn:
            return conn.execute(query, params).fetchall()

    # --- state -----------------------------------------------------------------------------

    def get_state(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM state WHERE key = %s", (key,))
        return rows[0]["value"] if rows else None

    def generation(self) -> int:
        """No index is saved beside this store, so no generation labels one."""
        return 0

    # --- items -----------------------------------------------------------------------------

    def add_items(
        self,
        items: Sequence[NewItem],
        model_version: str,
        idempotency: IdempotencyKey | None = None,
    ) -> list[int]:
        """Inserts items and their vectors in one transaction; see
        :meth:`app.store.sqlite.SqliteDatabase.add_items`."""
        ids: list[int] = []
        created = now()
        with self._transaction() as conn:
            if idempotency is not None:
                self._check_idempotency(conn, idempotency)
            self._check_active(conn, model_version)
            for item in items:
                try:
                    row = conn.execute(
                        "INSERT INTO items(label, metadata, filename, image_hash, image_ext,"
                        " created_at, external_id) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                        "RETURNING id",
                        (
                            item.label,
                            json.dumps(item.metadata),
                            item.filename,
                            item.image_hash,
                            item.image_ext,
                            created,
                            item.external_id,
                        ),
                    ).fetchone()
                except psycopg.errors.UniqueViolation as exc:
                    raise ExternalIdTaken(str(item.external_id)) from exc
                assert row is not None
                ids.append(row["id"])
            conn.cursor().executemany(
                "INSERT INTO vectors(model_version, item_id, vector) VALUES (%s, %s, %s)",
                [
                    (model_version, item_id, _vector(item.vector))
                    for item_id, item in zip(ids, items, strict=True)
                ],
            )
            if idempotency is not None:
                summaries = [
                    {
                        "id": item_id,
                        "external_id": item.external_id,
                        "label": item.label,
                        "filename": item.filename,
                    }
                    for item_id, item in zip(ids, items, strict=True)
                ]
                self._remember(conn, idempotency, summaries)
        return ids

    @staticmethod
    def _check_active(conn: psycopg.Connection[dict[str, Any]], model_version: str) -> None:
        """Raises :class:`StaleModel` unless ``model_version`` is active; holds the active
        version's row (shared) until the write commits, so that an activation waits for it."""
        row = conn.execute(
            "SELECT value FROM state WHERE key = 'active_model' FOR SHARE"
        ).fetchone()
        if row is not None and row["value"] != model_version:
            raise StaleModel(model_version)

    # --- idempotency -----------------------------------------------------------------------

    def idempotent_result(self, idempotency: IdempotencyKey) -> Any:
        with self._transaction() as conn:
            return self._stored(conn, idempotency)

    def remember(self, idempotency: IdempotencyKey, result: Any) -> None:
        with self._transaction() as conn:
            self._lock_key(conn, idempotency)
            self._remember(conn, idempotency, result)

    @staticmethod
    def _lock_key(conn: psycopg.Connection[dict[str, Any]], idempotency: IdempotencyKey) -> None:
        """Serialises transactions under one key, across workers, until they commit."""
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"{idempotency.operation}\x1f{idempotency.key}",),
        )

    @staticmethod
    def _stored(conn: psycopg.Connection[dict[str, Any]], idempotency: IdempotencyKey) -> Any:
        row = conn.execute(
            "SELECT fingerprint, result FROM idempotency WHERE operation = %s AND key = %s "
            "AND created_at >= %s",
            (idempotency.operation, idempotency.key, idempotency_expiry()),
        ).fetchone()
        if row is None:
            return None
        if row["fingerprint"] != idempotency.fingerprint:
            raise KeyReused(idempotency.key)
        return row["result"]

    def _check_idempotency(
        self, conn: psycopg.Connection[dict[str, Any]], idempotency: IdempotencyKey
    ) -> None:
        """Inside a write transaction: holds the key's lock, then raises
        :class:`AlreadyDone` (or :class:`KeyReused`) if the key has been used."""
        self._lock_key(conn, idempotency)
        result = self._stored(conn, idempotency)
        if result is not None:
            raise AlreadyDone(result)

    @staticmethod
    def _remember(
        conn: psycopg.Connection[dict[str, Any]], idempotency: IdempotencyKey, result: Any
    ) -> None:
        conn.execute("DELETE FROM idempotency WHERE created_at < %s", (idempotency_expiry(),))
        conn.execute(
            "INSERT INTO idempotency(operation, key, fingerprint, result, created_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (operation, key) DO UPDATE SET "
            "fingerprint = EXCLUDED.fingerprint, result = EXCLUDED.result, "
            "created_at = EXCLUDED.created_at",
            (
                idempotency.operation,
                idempotency.key,
                idempotency.fingerprint,
                json.dumps(result),
                now(),
            ),
        )

    def get_item(self, item_id: int) -> ItemRecord | None:
        rows = self._query("SELECT * FROM items WHERE id = %s", (item_id,))
        return _item(rows[0]) if rows else None

    def item_by_external_id(self, external_id: str) -> ItemRecord | None:
        rows = self._query("SELECT * FROM items WHERE external_id = %s", (external_id,))
        return _item(rows[0]) if rows else None

    def replace_item(self, item_id: int, item: NewItem, model_version: str) -> ItemRecord:
        with self._transaction() as conn:
            self._check_active(conn, model_version)
            row = conn.execute(
                "UPDATE items SET label = %s, metadata = %s, filename = %s, image_hash = %s,"
                " image_ext = %s WHERE id = %s RETURNING *",
                (
                    item.label,
                    json.dumps(item.metadata),
                    item.filename,
                    item.image_hash,
                    item.image_ext,
                    item_id,
                ),
            ).fetchone()
            assert row is not None
            conn.execute("DELETE FROM vectors WHERE item_id = %s", (item_id,))
            conn.execute(
                "INSERT INTO vectors(model_version, item_id, vector) VALUES (%s, %s, %s)",
                (model_version, item_id, _vector(item.vector)),
            )
        return _item(row)

    def get_items(self, ids: Sequence[int]) -> dict[int, ItemRecord]:
        if not len(ids):
            return {}
        rows = self._query("SELECT * FROM items WHERE id = ANY(%s)", ([int(i) for i in ids],))
        return {row["id"]: _item(row) for row in rows}

    def list_items(
        self, item_filter: ItemFilter | None, limit: int, offset: int
    ) -> tuple[list[ItemRecord], int]:
        where, params = (item_filter or ItemFilter()).where("postgres")
        with self._transaction() as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            total = conn.execute(f"SELECT count(*) AS n FROM items WHERE {where}", params)
            count = total.fetchone()
            rows = conn.execute(
                f"SELECT * FROM items WHERE {where} ORDER BY id LIMIT %s OFFSET %s",
                [*params, limit, offset],
            ).fetchall()
        assert count is not None
        return [_item(r) for r in rows], int(count["n"])

    def count_items(self) -> int:
        return int(self._query("SELECT count(*) AS n FROM items")[0]["n"])

    def delete_item(self, item_id: int) -> ItemRecord | None:
        rows = self._query("DELETE FROM items WHERE id = %s RETURNING *", (item_id,))
        return _item(rows[0]) if rows else None

    def image_in_use(self, image_hash: str) -> bool:
        rows = self._query("SELECT 1 FROM items WHERE image_hash = %s LIMIT 1", (image_hash,))
        return bool(rows)

    def labelled_items(self) -> list[tuple[int, str | None]]:
        return [(r["id"], r["label"]) for r in self._query("SELECT id, label FROM items")]

    # --- vectors ---------------------------------------------------------------------------

    def vectors(self, model_version: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self._query(
            "SELECT v.item_id, v.vector FROM vectors v JOIN items i ON i.id = v.item_id "
            "WHERE v.model_version = %s ORDER BY v.item_id",
            (model_version,),
        )
        ids = np.array([r["item_id"] for r in rows], dtype=np.int64)
        return ids, _stacked([r["vector"] for r in rows], dim)

    def vector(self, model_version: str, item_id: int) -> np.ndarray | None:
        rows = self._query(
            "SELECT vector FROM vectors WHERE model_version = %s AND item_id = %s",
            (model_version, item_id),
        )
        return _stacked([rows[0]["vector"]], 0)[0] if rows else None

    def count_vectors(self, model_version: str) -> int:
        rows = self._query(
            "SELECT count(*) AS n FROM vectors WHERE model_version = %s", (model_version,)
        )
        return int(rows[0]["n"])

    def vector_ids(self, model_version: str, item_filter: ItemFilter | None = None) -> np.ndarray:
        where, params = (item_filter or ItemFilter()).where("postgres")
        rows = self._query(
            "SELECT v.item_id FROM vectors v JOIN items ON items.id = v.item_id "
            f"WHERE v.model_version = %s AND {where} ORDER BY v.item_id",
            (model_version, *params),
        )
        return np.array([r["item_id"] for r in rows], dtype=np.int64)

    def vectors_of(self, model_version: str, ids: np.ndarray, dim: int) -> np.ndarray:
        wanted = [int(i) for i in ids]
        rows = self._query(
            "SELECT item_id, vector FROM vectors WHERE model_version = %s AND item_id = ANY(%s)",
            (model_version, wanted),
        )
        found = {r["item_id"]: r["vector"] for r in rows}
        return _stacked([found[i] for i in wanted], dim)

    def items_missing_vectors(self, model_version: str) -> list[ItemRecord]:
        rows = self._query(
            "SELECT * FROM items i WHERE NOT EXISTS (SELECT 1 FROM vectors v "
            "WHERE v.item_id = i.id AND v.model_version = %s) ORDER BY id",
            (model_version,),
        )
        return [_item(r) for r in rows]

    def put_vectors(self, model_version: str, ids: Sequence[int], vectors: np.ndarray) -> None:
        with self._transaction() as conn:
            conn.cursor().executemany(
                "INSERT INTO vectors(model_version, item_id, vector) "
                "SELECT %s, id, %s FROM items WHERE id = %s "
                "ON CONFLICT (model_version, item_id) DO UPDATE SET vector = EXCLUDED.vector",
                [
                    (model_version, _vector(vector), int(item_id))
                    for item_id, vector in zip(ids, vectors, strict=True)
                ],
            )

    def export_vectors(
        self, model_version: str, dim: int, page: int = 1000
    ) -> tuple[int, Iterator[VectorPage]]:
        """Count and pages from one snapshot: a read-only REPEATABLE READ transaction on a
        connection of their own, closed when the iterator ends or is closed."""
        conn = self._connect(autocommit=True)  # BEGIN below opens the one transaction
        register_vector(conn)
        join = "FROM vectors v JOIN items i ON i.id = v.item_id WHERE v.model_version = %s"
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = conn.execute(f"SELECT count(*) {join}", (model_version,)).fetchone()
            assert row is not None
            total = int(row[0])
        except BaseException:
            conn.close()
            raise

        def pages() -> Iterator[VectorPage]:
            try:
                last = 0
                while True:
                    rows = conn.execute(
                        f"SELECT v.item_id, i.external_id, i.label, v.vector {join} "
                        "AND v.item_id > %s ORDER BY v.item_id LIMIT %s",
                        (model_version, last, page),
                    ).fetchall()
                    if not rows:
                        return
                    ids = np.array([r[0] for r in rows], dtype=np.int64)
                    vectors = _stacked([r[3] for r in rows], dim)
                    yield ids, [r[1] for r in rows], [r[2] for r in rows], vectors
                    last = int(ids[-1])
            finally:
                conn.close()

        return total, pages()

    # --- nearest-neighbour search (pgvector, in PostgreSQL) -------------------------------

    def open_index(
        self, version: str, dim: int, policy: IndexPolicy, saved_dir: Path
    ) -> PgvectorIndex:
        return self.build_index(version, dim, policy)

    def build_index(self, version: str, dim: int, policy: IndexPolicy) -> PgvectorIndex:
        """The version's index: HNSW when the policy wants it for the version's count (built
        here, before the version serves), else exact."""
        if not VERSION_PATTERN.fullmatch(version):
            raise ValueError(f"unusable model version name {version!r}")
        if self._has_hnsw(version):
            return PgvectorIndex(self, version, dim, "hnsw", policy.ef_search)
        if policy.kind_for(self.count_vectors(version)) == "ivf":
            self._create_hnsw(version, dim)
            return PgvectorIndex(self, version, dim, "hnsw", policy.ef_search)
        return PgvectorIndex(self, version, dim, "exact")

    def refit_index(self, index: Index, policy: IndexPolicy) -> PgvectorIndex | None:
        """Once the version grows past the threshold, builds its HNSW index in the
        background and then returns the index that uses it. The count is checked at most
        every :data:`COUNT_EVERY_S` seconds; the HNSW index is kept once built."""
        assert isinstance(index, PgvectorIndex)
        if index.kind == "hnsw" or time.monotonic() - index.counted_at < COUNT_EVERY_S:
            return None
        index.counted_at = time.monotonic()
        version = index.version
        if self._has_hnsw(version):
            return PgvectorIndex(self, version, index.dim, "hnsw", policy.ef_search)
        if policy.kind_for(len(index)) == "ivf":
            with self._hnsw_lock:
                if version in self._building:
                    return None
                self._building.add(version)
            threading.Thread(
                target=self._create_hnsw, args=(version, index.dim), daemon=True
            ).start()
        return None

    def _has_hnsw(self, version: str) -> bool:
        rows = self._query(
            "SELECT 1 FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
            "WHERE c.relname = %s AND x.indisvalid",
            (hnsw_index_name(version),),
        )
        return bool(rows)

    def _create_hnsw(self, version: str, dim: int) -> None:
        """``CREATE INDEX CONCURRENTLY``: writers carry on while it builds; a worker that
        finds it half-built (another worker's, or a crashed build) waits for or replaces it."""
        name = hnsw_index_name(version)
        started = time.perf_counter()
        try:
            with self._connect(autocommit=True) as conn:
                conn.execute(
                    sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(HNSW_BUILD_MEMORY))
                )
                conn.execute(
                    sql.SQL(
                        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON vectors USING hnsw "
                        "((vector::vector({})) vector_ip_ops) WHERE model_version = {}"
                    ).format(sql.Identifier(name), sql.Literal(dim), sql.Literal(version))
                )
                conn.execute("ANALYZE vectors")  # so that the planner sees what it serves
            log.info("HNSW index of %s built in %.1f s", version, time.perf_counter() - started)
        except psycopg.Error:
            log.exception("building the HNSW index of %s failed; search stays exact", version)
        finally:
            with self._hnsw_lock:
                self._building.discard(version)

    def nearest(
        self, index: Index, queries: np.ndarray, k: int, item_filter: ItemFilter | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, ids)`` per query (id -1 where there are fewer) among the
        items that match ``item_filter``."""
        assert isinstance(index, PgvectorIndex)
        k = max(1, k)
        statement, params = self._nearest_sql(index, item_filter)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        found = np.full((len(queries), k), -1, dtype=np.int64)
        with self._transaction() as conn:
            self._search_settings(conn, index, k)
            for row, query in enumerate(queries):
                vector = _vector(query)
                hits = conn.execute(statement, [vector, *params, vector, k]).fetchall()
                for column, hit in enumerate(hits):
                    found[row, column] = hit["item_id"]
                    scores[row, column] = -float(hit["distance"])
        return scores, found

    def nearest_plan(
        self, index: PgvectorIndex, query: np.ndarray, k: int, item_filter: ItemFilter | None
    ) -> str:
        """PostgreSQL's plan for one query of :meth:`nearest` (``EXPLAIN``): whether it
        scans the HNSW index or compares every vector."""
        statement, params = self._nearest_sql(index, item_filter)
        vector = _vector(query)
        with self._transaction() as conn:
            self._search_settings(conn, index, k)
            rows = conn.execute(sql.SQL("EXPLAIN ") + statement, [vector, *params, vector, k])
            return "\n".join(row["QUERY PLAN"] for row in rows.fetchall())

    @staticmethod
    def _nearest_sql(
        index: PgvectorIndex, item_filter: ItemFilter | None
    ) -> tuple[sql.Composed, list[Any]]:
        """The statement (parameters: query, the filter's, query, k) and the filter's
        parameters. For HNSW, the version is written into the statement, not bound, and
        the distance is the indexed expression, so that PostgreSQL can use the version's
        partial HNSW index; an exact search orders by another expression, which no index
        serves."""
        where, params = (item_filter or ItemFilter()).where("postgres")
        distance: sql.Composable = sql.SQL("v.vector <#> %s")
        if index.kind == "hnsw":
            distance = sql.SQL("(v.vector::vector({})) <#> %s").format(sql.Literal(index.dim))
        statement = sql.SQL(
            "SELECT v.item_id, {distance} AS distance FROM vectors v "
            "WHERE v.model_version = {version}"
            " AND EXISTS (SELECT 1 FROM items WHERE items.id = v.item_id AND {where}) "
            "ORDER BY {distance} LIMIT %s"
        ).format(distance=distance, version=sql.Literal(index.version), where=sql.SQL(where))
        return statement, params

    @staticmethod
    def _search_settings(
        conn: psycopg.Connection[dict[str, Any]], index: PgvectorIndex, k: int
    ) -> None:
        """For an HNSW search: a candidate list of ``ef_search`` (at least ``2k``), and an
        iterative scan that goes on past filtered-out rows until ``k`` match, in exact
        distance order."""
        if index.kind != "hnsw":
            return
        ef_search = min(1000, max(index.ef_search, 2 * k))
        conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(ef_search)))
        conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")

    # --- models ----------------------------------------------------------------------------

    def add_model(self, version: str, path: str, card: dict[str, Any], source: str) -> None:
        self._query(
            "INSERT INTO models(version, path, card, source, created_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (version) DO NOTHING RETURNING version",
            (version, path, json.dumps(card), source, now()),
        )

    def models(self) -> list[dict[str, Any]]:
        return self._query(
            "SELECT version, path, card, source, created_at FROM models "
            "ORDER BY created_at, version"
        )

    def model(self, version: str) -> dict[str, Any] | None:
        rows = self._query(
            "SELECT version, path, card, source, created_at FROM models WHERE version = %s",
            (version,),
        )
        return rows[0] if rows else None

    def activate_model(self, version: str, unreadable: Collection[int] = ()) -> None:
        """Makes ``version`` active. Holding the active version's row, so that no write of
        another worker commits meanwhile, it checks that every item but the ``unreadable``
        ones has a vector of ``version`` (else :class:`ItemsWithoutVectors`: embed those and
        try again). The previous version's vectors stay until the next activation or start:
        a worker still on it answers from them until it follows; older ones are dropped."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT value FROM state WHERE key = 'active_model' FOR UPDATE"
            ).fetchone()
            previous = row["value"] if row else version
            missing = conn.execute(
                "SELECT count(*) AS n FROM items i WHERE i.id <> ALL(%s) AND NOT EXISTS "
                "(SELECT 1 FROM vectors v WHERE v.item_id = i.id AND v.model_version = %s)",
                ([int(i) for i in unreadable], version),
            ).fetchone()
            if missing is not None and missing["n"] > 0:
                raise ItemsWithoutVectors(version)
            conn.execute(
                "INSERT INTO state(key, value) VALUES ('active_model', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (version,),
            )
            self._drop_versions_except(conn, (version, previous))

    def drop_vectors_except(self, version: str) -> None:
        with self._transaction() as conn:
            self._drop_versions_except(conn, (version,))

    @staticmethod
    def _drop_versions_except(
        conn: psycopg.Connection[dict[str, Any]], versions: Sequence[str]
    ) -> None:
        """Drops the vectors and HNSW indexes of every version but ``versions``."""
        conn.execute("DELETE FROM vectors WHERE model_version <> ALL(%s)", (list(versions),))
        rows = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'vectors' "
            "AND indexname LIKE 'vectors\\_hnsw\\_%%' AND indexname <> ALL(%s)",
            ([hnsw_index_name(v) for v in versions],),
        ).fetchall()
        for row in rows:
            conn.execute(
                sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(row["indexname"]))
            )

    # --- jobs ------------------------------------------------------------------------------

    def add_job(
        self, job_id: str, request: dict[str, Any], idempotency: IdempotencyKey | None = None
    ) -> None:
        stamp = now()
        with self._transaction() as conn:
            if idempotency is not None:
                self._check_idempotency(conn, idempotency)
                self._remember(conn, idempotency, {"job_id": job_id})
            conn.execute(
                "INSERT INTO jobs(id, status, request, created_at, updated_at) "
                "VALUES (%s, 'queued', %s, %s, %s)",
                (job_id, json.dumps(request), stamp, stamp),
            )

    def _update(self, table: str, key: str, json_columns: Sequence[str], **fields: Any) -> None:
        encoded = {
            column: json.dumps(value) if column in json_columns else value
            for column, value in fields.items()
        }
        encoded["updated_at"] = now()
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = %s").format(sql.Identifier(column)) for column in encoded
        )
        self._query(
            sql.SQL("UPDATE {} SET {} WHERE id = %s RETURNING id").format(
                sql.Identifier(table), assignments
            ),
            [*encoded.values(), key],
        )

    def update_job(self, job_id: str, **fields: Any) -> None:
        if "activated" in fields:
            fields["activated"] = bool(fields["activated"])
        self._update("jobs", job_id, JOB_JSON, **fields)

    def delete_job(self, job_id: str) -> None:
        self._query("DELETE FROM jobs WHERE id = %s RETURNING id", (job_id,))

    def jobs(self, job_id: str | None = None) -> list[dict[str, Any]]:
        columns = (
            "id AS job_id, status, request, progress, history, metrics, model_version, "
            "activated, error, created_at, updated_at"
        )
        if job_id is None:
            return self._query(f"SELECT {columns} FROM jobs ORDER BY created_at DESC")
        return self._query(f"SELECT {columns} FROM jobs WHERE id = %s", (job_id,))

    # --- imports ---------------------------------------------------------------------------

    def add_import(self, import_id: str, filename: str, total: int) -> None:
        stamp = now()
        self._query(
            "INSERT INTO imports(id, status, filename, total, created_at, updated_at) "
            "VALUES (%s, 'queued', %s, %s, %s, %s) RETURNING id",
            (import_id, filename, total, stamp, stamp),
        )

    def update_import(self, import_id: str, **fields: Any) -> None:
        self._update("imports", import_id, IMPORT_JSON, **fields)

    def imports(self, import_id: str | None = None) -> list[dict[str, Any]]:
        columns = (
            "id AS import_id, status, filename, total, added, failed, failures, labels, "
            "error, created_at, updated_at"
        )
        if import_id is None:
            return self._query(f"SELECT {columns} FROM imports ORDER BY created_at DESC, id")
        return self._query(f"SELECT {columns} FROM imports WHERE id = %s", (import_id,))


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
