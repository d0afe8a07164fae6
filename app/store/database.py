"""The store interface: what the service keeps and how it finds it, whatever holds it.

Two implementations, chosen by ``EMBED_DATABASE_URL`` (see :func:`open_database`):
- :class:`app.store.sqlite.SqliteDatabase` (embedded, the default): SQLite and an in-process
  FAISS index; one process;
- :class:`app.store.postgres.PostgresDatabase`: PostgreSQL with pgvector, shared by several
  workers and replicas; the nearest-neighbour search runs in PostgreSQL.

Both keep the same promises: a write returns only once it is durable (an acknowledged item
is never lost), an item and its vector commit together, and every vector belongs to one
model version, so no answer mixes two models. Methods block; callers run them in worker
threads, never on the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from app.store.filters import ItemFilter
from app.store.index import Index, IndexPolicy

KEEP_IDEMPOTENCY_KEYS = timedelta(hours=24)
# the columns of jobs and imports that hold JSON, encoded by every store's updates
JOB_JSON = ("request", "progress", "history", "metrics")
IMPORT_JSON = ("failures", "labels")

# ids, external ids, labels, vectors
VectorPage = tuple[np.ndarray, list[str | None], list[str | None], np.ndarray]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def idempotency_expiry() -> str:
    """Idempotency keys recorded before this time are forgotten."""
    return (datetime.now(UTC) - KEEP_IDEMPOTENCY_KEYS).isoformat(timespec="milliseconds")


@dataclass
class ItemRecord:
    id: int
    label: str | None
    metadata: dict[str, Any]
    filename: str
    image_hash: str
    image_ext: str
    created_at: str
    external_id: str | None = None


@dataclass
class NewItem:
    label: str | None
    metadata: dict[str, Any]
    filename: str
    image_hash: str
    image_ext: str
    vector: np.ndarray
    external_id: str | None = None


@dataclass(frozen=True)
class IdempotencyKey:
    """A caller's key for one write: retried with the same request, the write happens once
    and the retry gets its result; ``fingerprint`` identifies the request."""

    operation: str
    key: str
    fingerprint: str


class AlreadyDone(Exception):
    """The write under this idempotency key happened before; ``result`` is what it stored."""

    def __init__(self, result: Any) -> None:
        super().__init__("already done")
        self.result = result


class KeyReused(Exception):
    """The idempotency key was used before for a different request."""


class ExternalIdTaken(Exception):
    """An item with this external id exists already."""

    def __init__(self, external_id: str) -> None:
        super().__init__(external_id)
        self.external_id = external_id


class StaleModel(Exception):
    """A write carried vectors of a model that is no longer the active one (another worker
    activated a new model meanwhile); nothing was stored."""


class ItemsWithoutVectors(Exception):
    """An activation found items (added meanwhile, by another worker) that have no vector of
    the new model yet; nothing was changed."""


class Claim:
    """Singleton work (a training job, an activation, an import) held by this process until
    :meth:`release`; no other process or thread can claim the same name meanwhile. A shared
    store releases the claim of a process that dies."""

    def __init__(self, name: str, release: Callable[[], None]) -> None:
        self.name = name
        self._release: Callable[[], None] | None = release
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            release()


class DatabaseUnavailable(Exception):
    """The database server cannot be reached (a shared store only): the request may be
    retried once it is back."""


class Database(Protocol):
    """Items, their vectors per model version, model versions, jobs and imports, the
    nearest-neighbour search over one version's vectors, and claims on singleton work."""

    # whether other processes share this store (then each follows the active model)
    shared: bool

    def close(self) -> None: ...

    # claims
    def claim(self, name: str) -> Claim | None: ...
    def claimed(self, name: str) -> bool: ...

    # state
    def get_state(self, key: str) -> str | None: ...
    def generation(self) -> int: ...

    # items
    def add_items(
        self,
        items: Sequence[NewItem],
        model_version: str,
        idempotency: IdempotencyKey | None = None,
    ) -> list[int]: ...
    def idempotent_result(self, idempotency: IdempotencyKey) -> Any: ...
    def remember(self, idempotency: IdempotencyKey, result: Any) -> None: ...
    def get_item(self, item_id: int) -> ItemRecord | None: ...
    def item_by_external_id(self, external_id: str) -> ItemRecord | None: ...
    def replace_item(self, item_id: int, item: NewItem, model_version: str) -> ItemRecord: ...
    def get_items(self, ids: Sequence[int]) -> dict[int, ItemRecord]: ...
    def list_items(
        self, item_filter: ItemFilter | None, limit: int, offset: int
    ) -> tuple[list[ItemRecord], int]: ...
    def count_items(self) -> int: ...
    def delete_item(self, item_id: int) -> ItemRecord | None: ...
    def image_in_use(self, image_hash: str) -> bool: ...
    def labelled_items(self) -> list[tuple[int, str | None]]: ...

    # vectors
    def vectors(self, model_version: str, dim: int) -> tuple[np.ndarray, np.ndarray]: ...
    def vector_ids(
        self, model_version: str, item_filter: ItemFilter | None = None
    ) -> np.ndarray: ...
    def vectors_of(self, model_version: str, ids: np.ndarray, dim: int) -> np.ndarray: ...
    def items_missing_vectors(self, model_version: str) -> list[ItemRecord]: ...
    def put_vectors(self, model_version: str, ids: Sequence[int], vectors: np.ndarray) -> None: ...
    def export_vectors(
        self, model_version: str, dim: int, page: int = 1000
    ) -> tuple[int, Iterator[VectorPage]]: ...

    # nearest-neighbour search
    def open_index(self, version: str, dim: int, policy: IndexPolicy, saved_dir: Path) -> Index: ...
    def build_index(self, version: str, dim: int, policy: IndexPolicy) -> Index: ...
    def refit_index(self, index: Index, policy: IndexPolicy) -> Index | None: ...
    def nearest(
        self, index: Index, queries: np.ndarray, k: int, item_filter: ItemFilter | None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    # models
    def add_model(self, version: str, path: str, card: dict[str, Any], source: str) -> None: ...
    def models(self) -> list[dict[str, Any]]: ...
    def model(self, version: str) -> dict[str, Any] | None: ...
    def activate_model(self, version: str, unreadable: Collection[int] = ()) -> None: ...
    def drop_vectors_except(self, version: str) -> None: ...

    # jobs and imports
    def add_job(
        self, job_id: str, request: dict[str, Any], idempotency: IdempotencyKey | None = None
    ) -> None: ...
    def update_job(self, job_id: str, **fields: Any) -> None: ...
    def delete_job(self, job_id: str) -> None: ...
    def jobs(self, job_id: str | None = None) -> list[dict[str, Any]]: ...
    def add_import(self, import_id: str, filename: str, total: int) -> None: ...
    def update_import(self, import_id: str, **fields: Any) -> None: ...
    def imports(self, import_id: str | None = None) -> list[dict[str, Any]]: ...


def open_database(url: str | None, data_dir: Path, wait_s: float = 30.0) -> Database:
    """PostgreSQL for a ``postgresql://`` URL (waiting up to ``wait_s`` seconds for the
    server), else the embedded SQLite file in ``data_dir``."""
    if url:
        try:
            from app.store.postgres import PostgresDatabase
        except ImportError as exc:
            raise RuntimeError(
                "EMBED_DATABASE_URL needs the 'postgres' extra: "
                "pip install 'triplet-embed[postgres]'"
            ) from exc
        return PostgresDatabase(url, wait_s=wait_s)
    from app.store.sqlite import SqliteDatabase

    return SqliteDatabase(data_dir / "store.sqlite3")
