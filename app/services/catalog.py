"""Items, nearest-neighbour search and clustering over the active snapshot."""

from __future__ import annotations

import re
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from app.errors import BadRequest, Conflict, NotFound, NotReady
from app.services.idempotency import as_service_error, replay_if_done
from app.services.runtime import DecodedUpload, Runtime, Snapshot
from app.store.database import (
    AlreadyDone,
    Database,
    ExternalIdTaken,
    IdempotencyKey,
    ItemRecord,
    KeyReused,
    NewItem,
    StaleModel,
    VectorPage,
)
from app.store.filters import ItemFilter
from app.store.images import EXTENSIONS, ImageStore
from model.clustering import auto_kmeans, kmeans, nearest_centroid, project_2d
from model.metrics import clustering_metrics, silhouette

LABEL_MAX = 64
LABEL_PATTERN = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9 _.\-]{{0,{LABEL_MAX - 1}}}$")
# A caller's own id for an item: letters, digits and ._~:@+=- (so it is safe in a URL path
# segment and never a path of its own), starting with a letter or digit, at most 128
# characters, and not only digits, so that /items/{id} can never mistake it for an item id.
EXTERNAL_ID_PATTERN = re.compile(r"^([A-Za-z]|[0-9]+[A-Za-z._~:@+=-])[A-Za-z0-9._~:@+=-]*$")
EXTERNAL_ID_MAX = 128
MAX_METADATA_BYTES = 16_384
SPARE_RESULTS = 8
ASSIGN_CHUNK = 20_000  # vectors read and assigned to a centroid at a time


def model_changed() -> NotReady:
    """Another worker activated a model while this write was embedding with the old one."""
    return NotReady("the active model changed while this request ran; send it again")


def check_label(label: str) -> str:
    """Labels double as class-folder names when items are exported for training."""
    if not LABEL_PATTERN.fullmatch(label):
        raise BadRequest(
            f"invalid label {label[:80]!r}: 1-64 letters, digits, spaces, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return label


@dataclass
class Neighbor:
    id: int
    label: str | None
    score: float
    filename: str


@dataclass(frozen=True)
class Query:
    """One query of a search: an image, a stored item's id or a vector."""

    upload: DecodedUpload | None = None
    item_id: int | None = None
    vector: Sequence[float] | None = None


@dataclass
class SearchResult:
    model_version: str
    neighbors: list[Neighbor]
    prediction: dict[str, Any] | None


class Catalog:
    """All item writes commit under ``write_lock``, which activation also takes for its swap,
    so an item is always stored with a vector of the model that is active when it commits."""

    def __init__(
        self, db: Database, images: ImageStore, runtime: Runtime, cluster_sample: int = 20_000
    ) -> None:
        self.db = db
        self.images = images
        self.runtime = runtime
        self.cluster_sample = cluster_sample
        self.write_lock = threading.Lock()

    # --- items -----------------------------------------------------------------------------

    def add(
        self,
        uploads: Sequence[DecodedUpload],
        labels: Sequence[str | None],
        metadata: Sequence[dict[str, Any]],
        external_ids: Sequence[str | None] | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> list[ItemRecord]:
        """Stores new items; an external id already in use is a conflict (nothing is
        stored): ``put`` replaces. Under an ``idempotency`` key used before, nothing is
        stored and :class:`Replayed` carries the first time's item summaries."""
        external_ids = external_ids or [None] * len(uploads)
        replay_if_done(self.db, idempotency)
        early = self._embed(uploads)
        with self.write_lock:
            snapshot, vectors, hashes = self._settle(uploads, early)
            new_items = [
                NewItem(label, meta, u.filename, image_hash, EXTENSIONS[u.format], vector, ext)
                for u, image_hash, label, meta, vector, ext in zip(
                    uploads, hashes, labels, metadata, vectors, external_ids, strict=True
                )
            ]
            try:
                ids = self.db.add_items(new_items, snapshot.version, idempotency)
            except (AlreadyDone, KeyReused) as exc:  # a concurrent retry committed first
                self._remove_unused(uploads, hashes)
                raise as_service_error(exc) from exc
            except ExternalIdTaken as exc:
                self._remove_unused(uploads, hashes)
                raise Conflict(
                    f"external id {exc.external_id!r} is taken; PUT /items/{{external_id}} "
                    "replaces that item"
                ) from exc
            except StaleModel as exc:
                self._remove_unused(uploads, hashes)
                raise model_changed() from exc
            snapshot.index.add(np.array(ids, dtype=np.int64), vectors)
            self._fit_index(snapshot)
        records = self.db.get_items(ids)
        return [records[i] for i in ids]

    def put(
        self, item: int | str, upload: DecodedUpload, label: str | None, metadata: dict[str, Any]
    ) -> tuple[ItemRecord, bool]:
        """Replaces the image, label and metadata of the item with this item id (an int) or
        external id (a str), keeping its ids, or creates the item with that external id;
        returns it and whether it was created."""
        early = self._embed([upload])
        with self.write_lock:
            snapshot, vectors, (image_hash,) = self._settle([upload], early)
            ext = EXTENSIONS[upload.format]
            external_id = item if isinstance(item, str) else None
            new = NewItem(
                label, metadata, upload.filename, image_hash, ext, vectors[0], external_id
            )
            if isinstance(item, int):
                existing: ItemRecord | None = self.get(item)  # an item id: it must exist
            else:
                existing = self.db.item_by_external_id(item)
            try:
                if existing is None:
                    (item_id,) = self.db.add_items([new], snapshot.version)
                else:
                    record = self.db.replace_item(existing.id, new, snapshot.version)
            except StaleModel as exc:
                self._remove_unused([upload], [image_hash])
                raise model_changed() from exc
            except ExternalIdTaken as exc:  # created meanwhile by another worker
                self._remove_unused([upload], [image_hash])
                raise Conflict(
                    f"item {item!r} was created meanwhile; send the request again"
                ) from exc
            if existing is None:
                snapshot.index.add(np.array([item_id], dtype=np.int64), vectors)
                self._fit_index(snapshot)
                return self.get(item_id), True
            ids = np.array([existing.id], dtype=np.int64)
            snapshot.index.remove(ids)
            snapshot.index.add(ids, vectors)
            if not self.db.image_in_use(existing.image_hash):
                self.images.remove(existing.image_hash, existing.image_ext)
        return record, False

    def _embed(self, uploads: Sequence[DecodedUpload]) -> tuple[Snapshot, np.ndarray]:
        """Embeds uploads and writes their image files, outside the write lock, so that
        concurrent writes share forward passes and flushes (images are content-addressed:
        an early write is harmless)."""
        snapshot = self.runtime.snapshot
        vectors = self.runtime.embed_uploads(snapshot.embedder, uploads)
        for upload in uploads:
            self.images.put(upload.data, EXTENSIONS[upload.format])
        return snapshot, vectors

    def _settle(
        self, uploads: Sequence[DecodedUpload], early: tuple[Snapshot, np.ndarray]
    ) -> tuple[Snapshot, np.ndarray, list[str]]:
        """Under the write lock: the current snapshot, the uploads' vectors of its model
        (embedded again if a model was activated since :meth:`_embed`) and their image
        hashes (``put`` again only checks that a file is still there: a concurrent delete
        of the last item with the same image removes it)."""
        snapshot, vectors = early
        current = self.runtime.snapshot
        if current.embedder is not snapshot.embedder:
            vectors = self.runtime.embed_uploads(current.embedder, uploads)
        hashes = [self.images.put(u.data, EXTENSIONS[u.format]) for u in uploads]
        return current, vectors, hashes

    def _remove_unused(self, uploads: Sequence[DecodedUpload], hashes: Sequence[str]) -> None:
        for upload, image_hash in zip(uploads, hashes, strict=True):
            if not self.db.image_in_use(image_hash):
                self.images.remove(image_hash, EXTENSIONS[upload.format])

    def _fit_index(self, snapshot: Snapshot) -> None:
        """Swaps in a rebuilt index when the store says the item count calls for another
        kind (see ``refit_index``); called under ``write_lock``."""
        index = self.db.refit_index(snapshot.index, self.runtime.index_policy)
        if index is not None:
            self.runtime.swap(replace(snapshot, index=index))

    def export_vectors(
        self, model_version: str | None
    ) -> tuple[str, int, int, Iterator[VectorPage]]:
        """The active model's version and vector length, how many items have a vector of
        it, and those vectors in pages (one database snapshot). Only the active model's
        vectors are kept, so any other version is a conflict (or unknown)."""
        snapshot = self.runtime.snapshot
        if model_version is not None and model_version != snapshot.version:
            if self.db.model(model_version) is None:
                raise NotFound(f"model version {model_version} not found")
            raise Conflict(
                f"vectors are kept for the active model ({snapshot.version}) only; "
                f"activate {model_version} to export its vectors"
            )
        dim = snapshot.embedder.dim
        total, pages = self.db.export_vectors(snapshot.version, dim)
        return snapshot.version, dim, total, pages

    def get(self, item: int | str) -> ItemRecord:
        """The item with this item id (an int) or external id (a str)."""
        if isinstance(item, str):
            record = self.db.item_by_external_id(item)
        else:
            record = self.db.get_item(item)
        if record is None:
            raise NotFound(f"item {item!r} not found")
        return record

    def list_items(
        self, item_filter: ItemFilter | None, limit: int, offset: int
    ) -> tuple[list[ItemRecord], int]:
        return self.db.list_items(item_filter, limit, offset)

    def delete(self, item: int | str) -> ItemRecord:
        """Deletes the item with this item id (an int) or external id (a str)."""
        with self.write_lock:
            item_id = self.get(item).id
            record = self.db.delete_item(item_id)
            if record is None:
                raise NotFound(f"item {item!r} not found")
            snapshot = self.runtime.snapshot
            snapshot.index.remove(np.array([item_id], dtype=np.int64))
            self._fit_index(snapshot)
            if not self.db.image_in_use(record.image_hash):
                self.images.remove(record.image_hash, record.image_ext)
        return record

    def count(self) -> int:
        return self.db.count_items()

    # --- search ----------------------------------------------------------------------------

    def search(
        self, queries: Sequence[Query], k: int, item_filter: ItemFilter | None = None
    ) -> list[SearchResult]:
        """The ``k`` nearest items (those matching ``item_filter``) to each query, in order.
        The queries' images share one forward pass and all queries one index search; the
        filter picks the candidate ids before the search, so ``k`` results come back
        whenever ``k`` items match."""
        snapshot = self.runtime.snapshot
        uploads = [q.upload for q in queries if q.upload is not None]
        embedded = iter(self.runtime.embed_uploads(snapshot.embedder, uploads) if uploads else [])
        rows, excluded = [], []
        for number, q in enumerate(queries):
            exclude: int | None = None
            if q.upload is not None:
                row = next(embedded)
            elif q.item_id is not None:
                # from the snapshot's own index, so the query and the index are of one model
                stored = snapshot.index.vector(q.item_id)
                if stored is None:
                    raise NotFound(f"item {q.item_id} not found")
                row, exclude = stored, q.item_id
            elif q.vector is not None:
                row = self._vector_query(q.vector, snapshot.embedder.dim, number)
            else:
                raise BadRequest(f"query {number}: give an image, an item id or a vector")
            rows.append(row)
            excluded.append(exclude)
        if not queries:
            return []
        # a few spare results stand in for items deleted between the search and the lookup
        spare = (1 if any(e is not None for e in excluded) else 0) + SPARE_RESULTS
        scores, ids = self.db.nearest(snapshot.index, np.stack(rows), k + spare, item_filter)
        hits = [
            [
                (int(i), float(s))
                for i, s in zip(ids_row, scores_row, strict=True)
                if i >= 0 and int(i) != exclude
            ]
            for ids_row, scores_row, exclude in zip(ids, scores, excluded, strict=True)
        ]
        records = self.db.get_items(sorted({i for row in hits for i, _ in row}))
        results = []
        for row in hits:
            neighbors = [
                Neighbor(i, records[i].label, score, records[i].filename)
                for i, score in row
                if i in records
            ][:k]
            results.append(SearchResult(snapshot.version, neighbors, predict(neighbors)))
        return results

    @staticmethod
    def _vector_query(vector: Sequence[float], dim: int, number: int) -> np.ndarray:
        if len(vector) != dim:
            raise BadRequest(
                f"query {number}: the vector must have {dim} values, not {len(vector)}"
            )
        query = np.asarray(vector, dtype=np.float64)
        if not np.all(np.isfinite(query)):
            raise BadRequest(f"query {number}: vector values must be finite numbers")
        largest = float(np.max(np.abs(query)))
        if largest == 0.0:
            raise BadRequest(f"query {number}: the vector must be non-zero")
        query = query / largest  # so that the norm of huge or tiny values stays finite
        return (query / np.linalg.norm(query)).astype(np.float32)

    # --- clustering ------------------------------------------------------------------------

    def cluster(
        self,
        k: int | str,
        item_filter: ItemFilter | None,
        seed: int,
        projection: bool = False,
        limit: int = 1000,
    ) -> dict[str, Any]:
        """k-means over the stored items (those matching ``item_filter``, if given).

        Memory and time stay bounded however many items there are: k-means is fitted on at
        most ``cluster_sample`` vectors (a seeded sample), every item is then assigned to its
        nearest centroid a chunk at a time, and the response lists the assignments (and 2-D
        points) of the first ``limit`` items only. Sizes, label counts and metrics cover all."""
        snapshot = self.runtime.snapshot
        version, dim = snapshot.version, snapshot.embedder.dim
        ids = self.db.vector_ids(version, item_filter)
        if len(ids) == 0:
            raise Conflict("there are no items to cluster" + (" that match" if item_filter else ""))
        if isinstance(k, int) and k > len(ids):
            raise Conflict(f"k={k} is more than the {len(ids)} items to cluster")
        fit_ids = ids
        if len(ids) > self.cluster_sample:
            rng = np.random.default_rng(seed)
            fit_ids = np.sort(rng.choice(ids, self.cluster_sample, replace=False))
        fit_vectors = self.db.vectors_of(version, fit_ids, dim)
        if k == "auto":
            grouping = auto_kmeans(fit_vectors, seed=seed)
        else:
            assert isinstance(k, int)
            grouping = kmeans(fit_vectors, k, seed=seed)
        if len(fit_ids) == len(ids):
            assignments = grouping.assignments
        else:
            assignments = np.concatenate(
                [
                    nearest_centroid(self.db.vectors_of(version, chunk, dim), grouping.centroids)
                    for chunk in np.array_split(ids, -(-len(ids) // ASSIGN_CHUNK))
                ]
            )
        labels_by_id = dict(self.db.labelled_items())
        item_labels = [labels_by_id.get(int(i)) for i in ids]
        members: dict[int, Counter[str]] = defaultdict(Counter)
        sizes = Counter(assignments.tolist())
        for item_label, cluster in zip(item_labels, assignments.tolist(), strict=True):
            if item_label is not None:
                members[cluster][item_label] += 1
        clusters = [
            {
                "cluster": c,
                "size": sizes[c],
                "majority_label": members[c].most_common(1)[0][0] if members[c] else None,
                "label_counts": dict(members[c]),
            }
            for c in range(grouping.k)
        ]
        labelled = [
            (item_label, int(c))
            for item_label, c in zip(item_labels, assignments, strict=True)
            if item_label is not None
        ]
        metrics: dict[str, float | None] = {
            "purity": None,
            "nmi": None,
            "ari": None,
            "silhouette": silhouette(fit_vectors, grouping.assignments.tolist()),
        }
        if labelled:
            names, groups = zip(*labelled, strict=True)
            metrics.update(clustering_metrics(list(names), list(groups)))
        shown = ids[:limit]
        points = None
        if projection:  # k-means fitted on every item has read their vectors already
            if len(fit_ids) == len(ids):
                points = points_2d(shown, fit_vectors[:limit])
            else:
                points = points_2d(shown, self.db.vectors_of(version, shown, dim))
        return {
            "k": grouping.k,
            "model_version": version,
            "items": len(ids),
            "fitted_on": len(fit_ids),
            "clusters": clusters,
            "assignments": [
                {"id": int(i), "cluster": int(c)}
                for i, c in zip(shown, assignments[:limit], strict=True)
            ],
            "assignments_truncated": len(shown) < len(ids),
            "metrics": metrics,
            "projection": points,
        }


def points_2d(ids: np.ndarray, vectors: np.ndarray) -> list[dict[str, float]]:
    points = project_2d(vectors)
    return [
        {"id": int(i), "x": float(x), "y": float(y)} for i, (x, y) in zip(ids, points, strict=True)
    ]


def predict(neighbors: Sequence[Neighbor]) -> dict[str, Any] | None:
    """Similarity-weighted kNN vote over the labelled neighbours."""
    weights: dict[str, float] = defaultdict(float)
    for neighbor in neighbors:
        if neighbor.label is not None:
            weights[neighbor.label] += max(neighbor.score, 0.0) + 1e-6
    if not weights:
        return None
    label, weight = max(weights.items(), key=lambda kv: kv[1])
    return {"label": label, "confidence": weight / sum(weights.values())}
