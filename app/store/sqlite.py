"""The embedded store: SQLite (WAL) for items, their vectors per model version, model
versions and jobs, with a FAISS index in the process (:mod:`app.store.index`).

This database is the source of truth: the FAISS index is rebuilt from the ``vectors`` table.
Every write commits with ``synchronous=FULL`` before the call returns, so an acknowledged
write survives a crash of the process or the machine. One connection is shared behind a
lock; callers run these methods in worker threads, never on the event loop. One process
owns the file: several workers need :mod:`app.store.postgres`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from app.store.database import (
    IMPORT_JSON,
    JOB_JSON,
    AlreadyDone,
    Claim,
    ExternalIdTaken,
    IdempotencyKey,
    ItemRecord,
    KeyReused,
    NewItem,
    VectorPage,
    idempotency_expiry,
    now,
)
from app.store.filters import ItemFilter
from app.store.index import Index, IndexPolicy, VectorIndex

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    label TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    filename TEXT NOT NULL,
    image_hash TEXT NOT NULL,
    image_ext TEXT NOT NULL,
    created_at TEXT NOT NULL,
    external_id TEXT
);
CREATE INDEX IF NOT EXISTS items_label ON items(label);
CREATE TABLE IF NOT EXISTS vectors (
    model_version TEXT NOT NULL,
    item_id INTEGER NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    PRIMARY KEY (model_version, item_id)
);
CREATE INDEX IF NOT EXISTS vectors_item ON vectors(item_id);
CREATE TABLE IF NOT EXISTS models (
    version TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    card TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    operation TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (operation, key)
);
CREATE TABLE IF NOT EXISTS imports (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    filename TEXT NOT NULL,
    total INTEGER NOT NULL,
    added INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    failures TEXT NOT NULL DEFAULT '[]',
    labels TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    progress TEXT NOT NULL DEFAULT '{}',
    history TEXT NOT NULL DEFAULT '[]',
    metrics TEXT NOT NULL DEFAULT '{}',
    model_version TEXT,
    activated INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""

MAX_SQL_PARAMS = 900  # below SQLite's smallest compiled-in limit on bound parameters


def _item(row: sqlite3.Row) -> ItemRecord:
    return ItemRecord(
        id=row["id"],
        label=row["label"],
        metadata=json.loads(row["metadata"]),
        filename=row["filename"],
        image_hash=row["image_hash"],
        image_ext=row["image_ext"],
        created_at=row["created_at"],
        external_id=row["external_id"],
    )


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


class SqliteDatabase:
    shared = False  # one process owns the file

    def __init__(self, path: Path) -> None:
        self.path = path
        self._claims: set[str] = set()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Brings a database made by an earlier version up to :data:`SCHEMA`."""
        columns = {row["name"] for row in self._conn.execute("PRAGMA table_info(items)")}
        if "external_id" not in columns:  # caller-chosen ids came later
            self._conn.execute("ALTER TABLE items ADD COLUMN external_id TEXT")
        self._conn.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS items_external_id ON items(external_id)"
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- claims (in this process: it is the only one) ------------------------------------

    def claim(self, name: str) -> Claim | None:
        with self._lock:
            if name in self._claims:
                return None
            self._claims.add(name)
        return Claim(name, lambda: self._unclaim(name))

    def _unclaim(self, name: str) -> None:
        with self._lock:
            self._claims.discard(name)

    def claimed(self, name: str) -> bool:
        with self._lock:
            return name in self._claims

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # --- state -----------------------------------------------------------------------------

    def get_state(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM state WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def generation(self) -> int:
        """A counter bumped by every change to items; a saved index records the one it saw."""
        value = self.get_state("generation")
        return int(value) if value else 0

    @staticmethod
    def _bump_generation(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO state(key, value) VALUES ('generation', '1') "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )

    # --- items -----------------------------------------------------------------------------

    def add_items(
        self,
        items: Sequence[NewItem],
        model_version: str,
        idempotency: IdempotencyKey | None = None,
    ) -> list[int]:
        """Inserts items and their vectors for ``model_version`` in one transaction; raises
        :class:`ExternalIdTaken` (and inserts nothing) if an external id is in use. With
        ``idempotency``, the same transaction records the key and the new items' summaries,
        so that a retry finds them however the first answer was lost (:class:`AlreadyDone`),
        even in a crash right after the commit."""
        ids: list[int] = []
        created = now()
        with self.transaction() as conn:
            if idempotency is not None:
                self._check_idempotency(conn, idempotency)
            for item in items:
                try:
                    cursor = conn.execute(
                        "INSERT INTO items(label, metadata, filename, image_hash, image_ext,"
                        " created_at, external_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            item.label,
                            json.dumps(item.metadata),
                            item.filename,
                            item.image_hash,
                            item.image_ext,
                            created,
                            item.external_id,
                        ),
                    )
                except sqlite3.IntegrityError as exc:
                    raise ExternalIdTaken(str(item.external_id)) from exc
                assert cursor.lastrowid is not None
                ids.append(cursor.lastrowid)
                conn.execute(
                    "INSERT INTO vectors(model_version, item_id, vector) VALUES (?, ?, ?)",
                    (model_version, cursor.lastrowid, _blob(item.vector)),
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
            self._bump_generation(conn)
        return ids

    # --- idempotency -----------------------------------------------------------------------

    def idempotent_result(self, idempotency: IdempotencyKey) -> Any:
        """What the write under this key stored (None if it has not happened); raises
        :class:`KeyReused` if the key came with another request."""
        with self._lock:
            return self._stored(self._conn, idempotency)

    def remember(self, idempotency: IdempotencyKey, result: Any) -> None:
        """Records a key's result in a transaction of its own, for a write that is not one
        database transaction (an activation)."""
        with self.transaction() as conn:
            self._remember(conn, idempotency, result)

    @staticmethod
    def _stored(conn: sqlite3.Connection, idempotency: IdempotencyKey) -> Any:
        row = conn.execute(
            "SELECT fingerprint, result FROM idempotency WHERE operation = ? AND key = ? "
            "AND created_at >= ?",
            (idempotency.operation, idempotency.key, idempotency_expiry()),
        ).fetchone()
        if row is None:
            return None
        if row["fingerprint"] != idempotency.fingerprint:
            raise KeyReused(idempotency.key)
        return json.loads(row["result"])

    def _check_idempotency(self, conn: sqlite3.Connection, idempotency: IdempotencyKey) -> None:
        """Inside a write transaction: raises :class:`AlreadyDone` (or :class:`KeyReused`)
        if the key has been used, e.g. by a concurrent retry that committed first."""
        result = self._stored(conn, idempotency)
        if result is not None:
            raise AlreadyDone(result)

    @staticmethod
    def _remember(conn: sqlite3.Connection, idempotency: IdempotencyKey, result: Any) -> None:
        """Records a key's result, and forgets keys older than :data:`KEEP_IDEMPOTENCY_KEYS`."""
        conn.execute("DELETE FROM idempotency WHERE created_at < ?", (idempotency_expiry(),))
        conn.execute(
            "INSERT OR REPLACE INTO idempotency(operation, key, fingerprint, result, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                idempotency.operation,
                idempotency.key,
                idempotency.fingerprint,
                json.dumps(result),
                now(),
            ),
        )

    def get_item(self, item_id: int) -> ItemRecord | None:
        rows = self._query("SELECT * FROM items WHERE id = ?", (item_id,))
        return _item(rows[0]) if rows else None

    def item_by_external_id(self, external_id: str) -> ItemRecord | None:
        rows = self._query("SELECT * FROM items WHERE external_id = ?", (external_id,))
        return _item(rows[0]) if rows else None

    def replace_item(self, item_id: int, item: NewItem, model_version: str) -> ItemRecord:
        """Gives an existing item a new image, label, metadata and ``model_version`` vector,
        keeping its ids and creation time. Its vectors of other versions (a model being
        activated) are dropped, so that the activation embeds the new image."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE items SET label = ?, metadata = ?, filename = ?, image_hash = ?,"
                " image_ext = ? WHERE id = ?",
                (
                    item.label,
                    json.dumps(item.metadata),
                    item.filename,
                    item.image_hash,
                    item.image_ext,
                    item_id,
                ),
            )
            conn.execute("DELETE FROM vectors WHERE item_id = ?", (item_id,))
            conn.execute(
                "INSERT INTO vectors(model_version, item_id, vector) VALUES (?, ?, ?)",
                (model_version, item_id, _blob(item.vector)),
            )
            self._bump_generation(conn)
            row = conn.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        return _item(row)

    def get_items(self, ids: Sequence[int]) -> dict[int, ItemRecord]:
        found: dict[int, ItemRecord] = {}
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for row in self._query(f"SELECT * FROM items WHERE id IN ({marks})", chunk):
                found[row["id"]] = _item(row)
        return found

    def list_items(
        self, item_filter: ItemFilter | None, limit: int, offset: int
    ) -> tuple[list[ItemRecord], int]:
        """A page of the items that match ``item_filter`` (all without one), by id, and how
        many match."""
        where, params = (item_filter or ItemFilter()).where()
        total = self._query(f"SELECT COUNT(*) AS n FROM items WHERE {where}", params)[0]["n"]
        rows = self._query(
            f"SELECT * FROM items WHERE {where} ORDER BY id LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [_item(r) for r in rows], int(total)

    def count_items(self) -> int:
        return int(self._query("SELECT COUNT(*) AS n FROM items")[0]["n"])

    def delete_item(self, item_id: int) -> ItemRecord | None:
        with self.transaction() as conn:
            rows = conn.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchall()
            if not rows:
                return None
            conn.execute("DELETE FROM items WHERE id = ?", (item_id,))
            self._bump_generation(conn)
        return _item(rows[0])

    def image_in_use(self, image_hash: str) -> bool:
        return bool(self._query("SELECT 1 FROM items WHERE image_hash = ? LIMIT 1", (image_hash,)))

    def ids_matching(self, item_filter: ItemFilter) -> np.ndarray:
        where, params = item_filter.where()
        rows = self._query(f"SELECT id FROM items WHERE {where}", params)
        return np.array([r["id"] for r in rows], dtype=np.int64)

    def labelled_items(self) -> list[tuple[int, str | None]]:
        return [(r["id"], r["label"]) for r in self._query("SELECT id, label FROM items")]

    # --- vectors ---------------------------------------------------------------------------

    def vectors(self, model_version: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """All ``(ids, vectors)`` of one model version whose item still exists."""
        rows = self._query(
            "SELECT v.item_id, v.vector FROM vectors v JOIN items i ON i.id = v.item_id "
            "WHERE v.model_version = ? ORDER BY v.item_id",
            (model_version,),
        )
        ids = np.array([r["item_id"] for r in rows], dtype=np.int64)
        if not rows:
            return ids, np.zeros((0, dim), dtype=np.float32)
        vectors = np.frombuffer(b"".join(r["vector"] for r in rows), dtype=np.float32)
        return ids, vectors.reshape(len(rows), dim).copy()

    def vector_ids(self, model_version: str, item_filter: ItemFilter | None = None) -> np.ndarray:
        """The ids of the existing items (matching ``item_filter``, if given) that have a
        vector of ``model_version``, ascending."""
        where, params = (item_filter or ItemFilter()).where()
        rows = self._query(
            "SELECT v.item_id FROM vectors v JOIN items ON items.id = v.item_id "
            f"WHERE v.model_version = ? AND {where} ORDER BY v.item_id",
            (model_version, *params),
        )
        return np.array([r["item_id"] for r in rows], dtype=np.int64)

    def vectors_of(self, model_version: str, ids: np.ndarray, dim: int) -> np.ndarray:
        """The vectors of ``ids`` (which must have one), in the order given, read a chunk of
        ids at a time."""
        found: dict[int, bytes] = {}
        for start in range(0, len(ids), MAX_SQL_PARAMS):
            chunk = [int(i) for i in ids[start : start + MAX_SQL_PARAMS]]
            marks = ",".join("?" * len(chunk))
            rows = self._query(
                f"SELECT item_id, vector FROM vectors WHERE model_version = ? "
                f"AND item_id IN ({marks})",
                (model_version, *chunk),
            )
            found.update((r["item_id"], r["vector"]) for r in rows)
        data = b"".join(found[int(i)] for i in ids)
        return np.frombuffer(data, dtype=np.float32).reshape(len(ids), dim).copy()

    def items_missing_vectors(self, model_version: str) -> list[ItemRecord]:
        rows = self._query(
            "SELECT * FROM items WHERE id NOT IN "
            "(SELECT item_id FROM vectors WHERE model_version = ?) ORDER BY id",
            (model_version,),
        )
        return [_item(r) for r in rows]

    def put_vectors(self, model_version: str, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Stores vectors of existing items (items deleted meanwhile are skipped)."""
        with self.transaction() as conn:
            for item_id, vector in zip(ids, vectors, strict=True):
                conn.execute(
                    "INSERT OR REPLACE INTO vectors(model_version, item_id, vector) "
                    "SELECT ?, id, ? FROM items WHERE id = ?",
                    (model_version, _blob(vector), int(item_id)),
                )

    def export_vectors(
        self, model_version: str, dim: int, page: int = 1000
    ) -> tuple[int, Iterator[VectorPage]]:
        """The number of existing items with a vector of ``model_version``, and an iterator
        over them in pages of ``(ids, external ids, labels, vectors)``, ascending by id.

        Both read one snapshot: a read transaction on a connection of their own (WAL lets it
        see the database as of its first read while writers carry on), so the count and the
        pages agree whatever is added or deleted meanwhile. The iterator closes the
        connection when it is exhausted or closed."""
        conn = sqlite3.connect(
            f"{self.path.resolve().as_uri()}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,  # a streamed answer reads its pages from pool threads
        )
        conn.execute("BEGIN")
        join = "FROM vectors v JOIN items i ON i.id = v.item_id WHERE v.model_version = ?"
        try:
            (total,) = conn.execute(f"SELECT count(*) {join}", (model_version,)).fetchone()
        except BaseException:
            conn.close()
            raise

        def pages() -> Iterator[VectorPage]:
            try:
                last = 0
                while True:
                    rows = conn.execute(
                        f"SELECT v.item_id, i.external_id, i.label, v.vector {join} "
                        "AND v.item_id > ? "
                        "ORDER BY v.item_id LIMIT ?",
                        (model_version, last, page),
                    ).fetchall()
                    if not rows:
                        return
                    ids = np.array([r[0] for r in rows], dtype=np.int64)
                    vectors = np.frombuffer(b"".join(r[3] for r in rows), dtype=np.float32)
                    external_ids, labels = [r[1] for r in rows], [r[2] for r in rows]
                    yield ids, external_ids, labels, vectors.reshape(len(rows), dim)
                    last = int(ids[-1])
            finally:
                conn.close()

        return int(total), pages()

    # --- nearest-neighbour search (FAISS, in this process) ------------------------------

    def open_index(
        self, version: str, dim: int, policy: IndexPolicy, saved_dir: Path
    ) -> VectorIndex:
        """The index saved in ``saved_dir`` if it reflects the database, else one built
        from the database."""
        index = VectorIndex.load(saved_dir, version, dim, self.generation(), policy)
        if index is None:
            index = self.build_index(version, dim, policy)
            log.info("built index of %s from the database: %d vectors", version, len(index))
        return index

    def build_index(self, version: str, dim: int, policy: IndexPolicy) -> VectorIndex:
        ids, vectors = self.vectors(version, dim)
        return VectorIndex.build(version, ids, vectors, policy)

    def refit_index(self, index: Index, policy: IndexPolicy) -> VectorIndex | None:
        """A rebuilt index when the item count has moved into another kind's range (exact
        below the threshold, approximate above, with hysteresis), else None."""
        assert isinstance(index, VectorIndex)
        if policy.kind_for(len(index), current=index.kind) == index.kind:
            return None
        return self.build_index(index.version, index.dim, policy)

    def nearest(
        self, index: Index, queries: np.ndarray, k: int, item_filter: ItemFilter | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, ids)`` per query (id -1 where there are fewer), among the
        items that match ``item_filter``: SQLite picks their ids, FAISS searches those."""
        assert isinstance(index, VectorIndex)
        allowed = self.ids_matching(item_filter) if item_filter is not None else None
        if allowed is not None and len(allowed) == 0:
            shape = (len(queries), max(1, k))
            return np.full(shape, -np.inf, dtype=np.float32), np.full(shape, -1, dtype=np.int64)
        return index.search(queries, k, allowed)

    # --- models ----------------------------------------------------------------------------

    def add_model(self, version: str, path: str, card: dict[str, Any], source: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO models(version, path, card, source, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (version, path, json.dumps(card), source, now()),
            )

    def models(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM models ORDER BY created_at, version")
        return [
            {
                "version": r["version"],
                "path": r["path"],
                "card": json.loads(r["card"]),
                "source": r["source"],
                "created_at": r["created_at"],
            }
            for r in rows
        ]

    def model(self, version: str) -> dict[str, Any] | None:
        return next((m for m in self.models() if m["version"] == version), None)

    def activate_model(self, version: str, unreadable: Collection[int] = ()) -> None:
        """Makes ``version`` active and drops the vectors of every other version. (One
        process writes here, under the catalog's write lock, so no item can lack a vector of
        ``version`` that the caller has not reported as ``unreadable``.)"""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO state(key, value) VALUES ('active_model', ?)", (version,)
            )
            conn.execute("DELETE FROM vectors WHERE model_version != ?", (version,))
            self._bump_generation(conn)

    def drop_vectors_except(self, version: str) -> None:
        """Drops vectors of other versions; the index never holds them, so no bump."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM vectors WHERE model_version != ?", (version,))

    # --- jobs ------------------------------------------------------------------------------

    def add_job(
        self, job_id: str, request: dict[str, Any], idempotency: IdempotencyKey | None = None
    ) -> None:
        """Records a new job; with ``idempotency``, records the key with it (or raises
        :class:`AlreadyDone` with the job a retry's first request started)."""
        stamp = now()
        with self.transaction() as conn:
            if idempotency is not None:
                self._check_idempotency(conn, idempotency)
                self._remember(conn, idempotency, {"job_id": job_id})
            conn.execute(
                "INSERT INTO jobs(id, status, request, created_at, updated_at) "
                "VALUES (?, 'queued', ?, ?, ?)",
                (job_id, json.dumps(request), stamp, stamp),
            )

    def _update(self, table: str, key: str, json_columns: Sequence[str], **fields: Any) -> None:
        """Sets ``fields`` of one row (JSON-encoding ``json_columns``) and its update time;
        table and column names come from this module's callers, never from a request."""
        encoded = {
            column: json.dumps(value) if column in json_columns else value
            for column, value in fields.items()
        }
        encoded["updated_at"] = now()
        assignments = ", ".join(f"{column} = ?" for column in encoded)
        with self.transaction() as conn:
            conn.execute(f"UPDATE {table} SET {assignments} WHERE id = ?", [*encoded.values(), key])

    def update_job(self, job_id: str, **fields: Any) -> None:
        self._update("jobs", job_id, JOB_JSON, **fields)

    def delete_job(self, job_id: str) -> None:
        """Forgets a job; later updates of it (by its monitor, as it stops) change nothing."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def jobs(self, job_id: str | None = None) -> list[dict[str, Any]]:
        if job_id is None:
            rows = self._query("SELECT * FROM jobs ORDER BY created_at DESC")
        else:
            rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return [
            {
                "job_id": r["id"],
                "status": r["status"],
                "request": json.loads(r["request"]),
                "progress": json.loads(r["progress"]),
                "history": json.loads(r["history"]),
                "metrics": json.loads(r["metrics"]),
                "model_version": r["model_version"],
                "activated": bool(r["activated"]),
                "error": r["error"],
                "created_at": r["created_at"],
                "updated_at": r["updated_at"],
            }
            for r in rows
        ]

    # --- imports ---------------------------------------------------------------------------

    def add_import(self, import_id: str, filename: str, total: int) -> None:
        stamp = now()
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO imports(id, status, filename, total, created_at, updated_at) "
                "VALUES (?, 'queued', ?, ?, ?, ?)",
                (import_id, filename, total, stamp, stamp),
            )

    def update_import(self, import_id: str, **fields: Any) -> None:
        self._update("imports", import_id, IMPORT_JSON, **fields)

    def imports(self, import_id: str | None = None) -> list[dict[str, Any]]:
        if import_id is None:
            rows = self._query("SELECT * FROM imports ORDER BY created_at DESC, id")
        else:
            rows = self._query("SELECT * FROM imports WHERE id = ?", (import_id,))
        return [
            {
                "import_id": r["id"],
                "status": r["status"],
                "filename": r["filename"],
                "total": r["total"],
                "added": r["added"],
                "failed": r["failed"],
                "failures": json.loads(r["failures"]),
                "labels": json.loads(r["labels"]),
                "error": r["error"],
                "created_at": r["created_at"],
                "updated_at": r["updated_at"],
            }
            for r in rows
        ]
