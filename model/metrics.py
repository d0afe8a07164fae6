"""Retrieval and clustering quality of embeddings: precision@1, MAP@R, purity, NMI, ARI.

Embeddings are L2-normalised, so inner product ranks like Euclidean distance.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score


def _ranked(queries: np.ndarray, gallery: np.ndarray, exclude_self: bool, depth: int) -> np.ndarray:
    sims = queries @ gallery.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    depth = min(depth, gallery.shape[0])
    top = np.argpartition(-sims, depth - 1, axis=1)[:, :depth]
    order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def retrieval_metrics(
    queries: np.ndarray,
    query_labels: Sequence[object],
    gallery: np.ndarray | None = None,
    gallery_labels: Sequence[object] | None = None,
) -> dict[str, float]:
    """Precision@1 and MAP@R (Musgrave et al., 2020) of queries against a gallery.

    Without a gallery the queries are their own gallery, leaving each query out.
    MAP@R: for a query with R relevant gallery items, the mean over the R top-ranked results
    of precision at each relevant rank, divided by R.
    """
    exclude_self = gallery is None
    if gallery is None:
        gallery, gallery_labels = queries, query_labels
    assert gallery_labels is not None
    q_labels = np.asarray(query_labels)
    g_labels = np.asarray(gallery_labels)
    counts = Counter(g_labels.tolist())
    r_per_query = np.array([counts[label] - (1 if exclude_self else 0) for label in q_labels])
    depth = max(1, int(r_per_query.max()))
    ranked = _ranked(queries.astype(np.float32), gallery.astype(np.float32), exclude_self, depth)
    relevant = g_labels[ranked] == q_labels[:, None]
    p_at_1 = float(relevant[:, 0].mean())
    ranks = np.arange(1, relevant.shape[1] + 1)
    precision_at_rank = np.cumsum(relevant, axis=1) / ranks
    within_r = ranks[None, :] <= r_per_query[:, None]
    ap = (precision_at_rank * relevant * within_r).sum(axis=1) / np.maximum(r_per_query, 1)
    ap[r_per_query == 0] = 0.0
    return {"precision_at_1": p_at_1, "map_at_r": float(ap.mean())}


def purity(labels: Sequence[object], clusters: Sequence[int]) -> float:
    """Share of items whose cluster's majority label is their own."""
    by_cluster: dict[int, Counter[object]] = {}
    for label, cluster in zip(labels, clusters, strict=True):
        by_cluster.setdefault(int(cluster), Counter())[label] += 1
    total = sum(sum(c.values()) for c in by_cluster.values())
    return sum(c.most_common(1)[0][1] for c in by_cluster.values()) / max(total, 1)


def clustering_metrics(
    labels: Sequence[object], clusters: Sequence[int], vectors: np.ndarray | None = None
) -> dict[str, float]:
    """Purity, NMI and ARI against the labels; silhouette (cosine) when vectors are given."""
    label_list = [str(label) for label in labels]
    cluster_list = [int(c) for c in clusters]
    result = {
        "purity": purity(label_list, cluster_list),
        "nmi": float(normalized_mutual_info_score(label_list, cluster_list)),
        "ari": float(adjusted_rand_score(label_list, cluster_list)),
    }
    if vectors is not None:
        result["silhouette"] = silhouette(vectors, cluster_list)
    return result


def silhouette(vectors: np.ndarray, clusters: Sequence[int], sample: int = 2000) -> float:
    """Cosine silhouette on up to ``sample`` items (seeded); 0.0 when it is undefined."""
    n_clusters = len(set(clusters))
    if n_clusters < 2 or n_clusters >= len(clusters):
        return 0.0
    size = min(sample, len(clusters))
    return float(
        silhouette_score(vectors, list(clusters), metric="cosine", sample_size=size, random_state=0)
    )
