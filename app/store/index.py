"""The FAISS index of one model version's vectors (unit vectors, inner product).

Two kinds, chosen by :class:`IndexPolicy` from the item count:
- ``flat``: exact search (``IndexIDMap2`` over ``IndexFlatIP``), the default for small sets;
- ``ivf``: approximate search (``IndexIVFFlat``, ``nlist`` about 4 sqrt(N), ``nprobe`` lists
  searched per query), for large sets. Both support adds and deletes by id.

The index is an acceleration structure: the database holds every vector, and the saved copy
(``<version>.faiss`` beside a JSON note of the database generation it reflects) is used at
start-up only when it matches the database; otherwise, or when it is unreadable, the index
is rebuilt from the database. All calls hold one lock, so adds, removals and searches from
worker threads never interleave inside FAISS.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import faiss
import numpy as np

from model.checkpoint import atomic_write_bytes

log = logging.getLogger(__name__)

IndexKind = Literal["flat", "ivf"]
EXACT_FILTER_MAX = 20_000  # allowed ids an IVF index compares exactly (see VectorIndex.search)


@dataclass(frozen=True)
class IndexPolicy:
    """Which index kind a set of ``count`` vectors gets. ``auto`` switches to IVF at
    ``ann_threshold`` items and back to exact search only below ``flat_below`` of it: a
    store hovering around the threshold does not rebuild its index on every add and delete."""

    kind: Literal["auto", "flat", "ivf"] = "auto"
    ann_threshold: int = 200_000
    nprobe: int = 32
    flat_below: float = 0.9
    ef_search: int = 100  # candidates an HNSW search keeps (PostgreSQL store)

    def kind_for(self, count: int, current: IndexKind | None = None) -> IndexKind:
        """The kind for ``count`` vectors, given the ``current`` index's kind if there is one."""
        if self.kind != "auto":
            return self.kind
        if current == "ivf":
            return "flat" if count < self.ann_threshold * self.flat_below else "ivf"
        return "ivf" if count >= self.ann_threshold else "flat"


class Index(Protocol):
    """One model version's vectors as a snapshot searches them. Items are written to the
    database first; ``add`` and ``remove`` then keep an in-process index in step (an index
    that lives in the database itself has nothing to do)."""

    @property
    def version(self) -> str: ...
    @property
    def kind(self) -> str: ...

    def __len__(self) -> int: ...
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...
    def remove(self, ids: np.ndarray) -> None: ...
    def vector(self, item_id: int) -> np.ndarray | None: ...
    def save(self, directory: Path, generation: int) -> None: ...


class VectorIndex:
    def __init__(self, version: str, dim: int, kind: IndexKind = "flat", nprobe: int = 32) -> None:
        self.version = version
        self.dim = dim
        self.kind = kind
        self.nprobe = nprobe
        # Any: faiss's SWIG-generated stubs do not describe its numpy-friendly wrappers
        self._index: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._quantizer: Any = None
        self._lock = threading.Lock()

    @classmethod
    def build(
        cls,
        version: str,
        ids: np.ndarray,
        vectors: np.ndarray,
        policy: IndexPolicy | None = None,
        seed: int = 0,
    ) -> VectorIndex:
        policy = policy or IndexPolicy()
        kind = policy.kind_for(len(ids))
        index = cls(version, vectors.shape[1], kind, policy.nprobe)
        if kind == "ivf":
            index._train_ivf(vectors, seed)
        index.add(ids, vectors)
        return index

    def _train_ivf(self, vectors: np.ndarray, seed: int) -> None:
        n = len(vectors)
        nlist = int(min(65536, max(1, min(4 * math.sqrt(max(n, 1)), n // 39))))
        self._quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(self._quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = vectors if n <= nlist * 40 else vectors[rng.choice(n, nlist * 40, replace=False)]
        ivf.train(np.ascontiguousarray(sample, dtype=np.float32))
        ivf.nprobe = self.nprobe
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
        self._index = ivf

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._lock:
            self._index.add_with_ids(data, np.ascontiguousarray(ids, dtype=np.int64))

    def vector(self, item_id: int) -> np.ndarray | None:
        """The stored vector of one id, or None when the index does not hold it."""
        with self._lock:
            try:
                return np.asarray(self._index.reconstruct(int(item_id)), dtype=np.float32)
            except (RuntimeError, IndexError):
                return None

    def remove(self, ids: np.ndarray) -> None:
        with self._lock:
            self._index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, ids)`` per query; ``allowed`` restricts results to those ids.
        Missing results have id -1.

        An approximate (IVF) index searches only ``nprobe`` lists, which may hold fewer than
        ``k`` allowed ids when few are allowed; up to ``EXACT_FILTER_MAX`` allowed ids are
        therefore compared with the queries exactly."""
        data = np.ascontiguousarray(queries, dtype=np.float32)
        if self.kind == "ivf" and allowed is not None and len(allowed) <= EXACT_FILTER_MAX:
            return self._search_among(data, k, allowed)
        selector = faiss.IDSelectorBatch(allowed.astype(np.int64)) if allowed is not None else None
        if self.kind == "ivf":
            params: Any = faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)  # type: ignore[call-arg]
        else:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None  # type: ignore[call-arg]
        with self._lock:
            k = max(1, min(k, max(1, self._index.ntotal)))
            scores, ids = self._index.search(data, k, params=params)
        return scores, ids

    def _search_among(
        self, queries: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        present, rows = [], []
        with self._lock:
            for item_id in allowed.tolist():
                try:
                    rows.append(self._index.reconstruct(int(item_id)))
                except (RuntimeError, IndexError):  # deleted since the ids were read
                    continue
                present.append(item_id)
        ids = np.array(present, dtype=np.int64)
        vectors = np.array(rows, dtype=np.float32).reshape(len(rows), self.dim)
        k = max(1, k)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        found = np.full((len(queries), k), -1, dtype=np.int64)
        if len(ids):
            similarity = queries @ vectors.T
            top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
            n = top.shape[1]
            scores[:, :n] = np.take_along_axis(similarity, top, axis=1)
            found[:, :n] = ids[top]
        return scores, found

    def save(self, directory: Path, generation: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            data = faiss.serialize_index(self._index).tobytes()
        atomic_write_bytes(directory / f"{self.version}.faiss", data)
        note = {
            "version": self.version,
            "generation": generation,
            "count": len(self),
            "kind": self.kind,
        }
        atomic_write_bytes(directory / f"{self.version}.json", json.dumps(note).encode())

    @classmethod
    def load(
        cls,
        directory: Path,
        version: str,
        dim: int,
        generation: int,
        policy: IndexPolicy | None = None,
    ) -> VectorIndex | None:
        """The saved index when it reflects ``generation`` of the database and is of the kind
        the policy wants for its size; else None."""
        policy = policy or IndexPolicy()
        note_path = directory / f"{version}.json"
        data_path = directory / f"{version}.faiss"
        try:
            note = json.loads(note_path.read_text())
            if note.get("generation") != generation or note.get("version") != version:
                log.info("saved index of %s is stale; rebuilding", version)
                return None
            kind = note.get("kind", "flat")
            if kind != policy.kind_for(int(note.get("count", 0)), current=kind):
                log.info("saved index of %s is of another kind than wanted; rebuilding", version)
                return None
            raw = np.frombuffer(data_path.read_bytes(), dtype=np.uint8)
            loaded: Any = faiss.deserialize_index(raw)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("saved index of %s is unreadable (%s); rebuilding", version, exc)
            return None
        if loaded.d != dim or loaded.ntotal != note.get("count"):
            log.warning("saved index of %s does not match its note; rebuilding", version)
            return None
        index = cls(version, dim, note.get("kind", "flat"), policy.nprobe)
        index._index = loaded
        if index.kind == "ivf":
            loaded.nprobe = policy.nprobe
        return index

    @staticmethod
    def discard(directory: Path, version: str) -> None:
        for suffix in (".json", ".faiss"):
            (directory / f"{version}{suffix}").unlink(missing_ok=True)
