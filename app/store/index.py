"""The FAISS index of one model version's vectors: exact inner product over unit vectors.

The index is an acceleration structure: the database holds every vector, and the saved copy
(``<version>.faiss`` beside a JSON note of the database generation it reflects) is used at
start-up only when it matches the database; otherwise, or when it is unreadable, the index
is rebuilt from the database. All calls hold one lock, so adds, removals and searches from
worker threads never interleave inside FAISS.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from model.checkpoint import atomic_write_bytes

log = logging.getLogger(__name__)


class VectorIndex:
    def __init__(self, version: str, dim: int) -> None:
        self.version = version
        self.dim = dim
        # Any: faiss's SWIG-generated stubs do not describe its numpy-friendly wrappers
        self._index: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._lock = threading.Lock()

    @classmethod
    def build(cls, version: str, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
        index = cls(version, vectors.shape[1])
        index.add(ids, vectors)
        return index

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._lock:
            self._index.add_with_ids(data, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> None:
        with self._lock:
            self._index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, ids)`` per query; ``allowed`` restricts results to those ids.
        Missing results have id -1."""
        data = np.ascontiguousarray(queries, dtype=np.float32)
        params = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(allowed.astype(np.int64))
            params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        with self._lock:
            k = max(1, min(k, max(1, self._index.ntotal)))
            scores, ids = self._index.search(data, k, params=params)
        return scores, ids

    def save(self, directory: Path, generation: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            data = faiss.serialize_index(self._index).tobytes()
        atomic_write_bytes(directory / f"{self.version}.faiss", data)
        note = {"version": self.version, "generation": generation, "count": len(self)}
        atomic_write_bytes(directory / f"{self.version}.json", json.dumps(note).encode())

    @classmethod
    def load(cls, directory: Path, version: str, dim: int, generation: int) -> VectorIndex | None:
        """The saved index when it reflects ``generation`` of the database, else None."""
        note_path = directory / f"{version}.json"
        data_path = directory / f"{version}.faiss"
        try:
            note = json.loads(note_path.read_text())
            if note.get("generation") != generation or note.get("version") != version:
                log.info("saved index of %s is stale; rebuilding", version)
                return None
            raw = np.frombuffer(data_path.read_bytes(), dtype=np.uint8)
            loaded = faiss.deserialize_index(raw)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("saved index of %s is unreadable (%s); rebuilding", version, exc)
            return None
        if loaded.d != dim or loaded.ntotal != note.get("count"):
            log.warning("saved index of %s does not match its note; rebuilding", version)
            return None
        index = cls(version, dim)
        index._index = loaded
        return index

    @staticmethod
    def discard(directory: Path, version: str) -> None:
        for suffix in (".json", ".faiss"):
            (directory / f"{version}{suffix}").unlink(missing_ok=True)
