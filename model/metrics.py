"""Retrieval and clustering quality of embeddings: precision@1, MAP@R, purity, NMI, ARI,
silhouette. (Written on NumPy: the service computes them on every /cluster, and
scikit-learn with SciPy would add about 180 MB to its install for three formulas.)

Embeddings are L2-normalised, so inner product ranks like Euclidean distance.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


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
    return _purity(_contingency(labels, clusters))


def _purity(table: np.ndarray) -> float:
    return float(table.max(axis=0).sum() / max(int(table.sum()), 1))


def _contingency(labels: Sequence[object], clusters: Sequence[int]) -> np.ndarray:
    """Counts of items per (label, cluster) pair, a row per label and a column per cluster."""
    _, label_codes = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
    _, cluster_codes = np.unique(np.asarray(clusters), return_inverse=True)
    table = np.zeros((label_codes.max() + 1, cluster_codes.max() + 1), dtype=np.int64)
    np.add.at(table, (label_codes, cluster_codes), 1)
    return table


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_information(labels: Sequence[object], clusters: Sequence[int]) -> float:
    """Mutual information over the mean of the two entropies (the arithmetic NMI). 1.0 when
    neither side splits the items (a perfect match), 0.0 when either side alone does."""
    return _normalized_mutual_information(_contingency(labels, clusters))


def _normalized_mutual_information(table: np.ndarray) -> float:
    if table.shape == (1, 1):
        return 1.0
    joint = table / table.sum()
    outer = joint.sum(axis=1, keepdims=True) @ joint.sum(axis=0, keepdims=True)
    nonzero = joint > 0
    mutual = float((joint[nonzero] * np.log(joint[nonzero] / outer[nonzero])).sum())
    if mutual <= np.finfo(np.float64).eps:
        return 0.0
    mean_entropy = (_entropy(table.sum(axis=1)) + _entropy(table.sum(axis=0))) / 2
    return mutual / mean_entropy


def adjusted_rand_index(labels: Sequence[object], clusters: Sequence[int]) -> float:
    """Rand index corrected for chance (Hubert & Arabie), from the counts of item pairs that
    the labels and the clusters put together or apart: 1.0 for the same partition, about 0
    for an unrelated one."""
    return _adjusted_rand_index(_contingency(labels, clusters))


def _adjusted_rand_index(table: np.ndarray) -> float:
    n = int(table.sum())
    together_both = int((table * (table - 1)).sum()) // 2
    together_labels = int((table.sum(axis=1) * (table.sum(axis=1) - 1)).sum()) // 2
    together_clusters = int((table.sum(axis=0) * (table.sum(axis=0) - 1)).sum()) // 2
    only_labels = together_labels - together_both
    only_clusters = together_clusters - together_both
    apart_both = n * (n - 1) // 2 - together_both - only_labels - only_clusters
    if only_labels == 0 and only_clusters == 0:
        return 1.0
    numerator = 2 * (together_both * apart_both - only_labels * only_clusters)
    denominator = (together_both + only_labels) * (only_labels + apart_both) + (
        together_both + only_clusters
    ) * (only_clusters + apart_both)
    return float(numerator / denominator)


def clustering_metrics(
    labels: Sequence[object], clusters: Sequence[int], vectors: np.ndarray | None = None
) -> dict[str, float]:
    """Purity, NMI and ARI against the labels; silhouette (cosine) when vectors are given."""
    table = _contingency(labels, clusters)
    result = {
        "purity": _purity(table),
        "nmi": _normalized_mutual_information(table),
        "ari": _adjusted_rand_index(table),
    }
    if vectors is not None:
        result["silhouette"] = silhouette(vectors, clusters)
    return result


def silhouette(vectors: np.ndarray, clusters: Sequence[int], sample: int = 2000) -> float:
    """Mean cosine silhouette of up to ``sample`` items (a seeded draw); 0.0 when it is
    undefined (one cluster, or every item its own).

    An item's silhouette is ``(b - a) / max(a, b)``, with ``a`` its mean cosine distance to
    the other items of its cluster and ``b`` the lowest mean distance to another cluster's
    items; an item alone in its cluster scores 0.
    """
    assignments = np.asarray(clusters)
    n_clusters = len(np.unique(assignments))
    if n_clusters < 2 or n_clusters >= len(assignments):
        return 0.0
    chosen = np.random.RandomState(0).permutation(len(assignments))[: min(sample, len(assignments))]
    x = np.asarray(vectors)[chosen].astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    distances = np.clip(1.0 - x @ x.T, 0.0, 2.0)
    np.fill_diagonal(distances, 0.0)
    _, codes = np.unique(assignments[chosen], return_inverse=True)
    members = np.eye(codes.max() + 1)[codes]  # one-hot: items x clusters
    sizes = members.sum(axis=0)
    totals = distances @ members  # each item's summed distance to each cluster
    own_size, own = sizes[codes], (np.arange(len(codes)), codes)
    a = totals[own] / np.maximum(own_size - 1, 1)
    mean_to = totals / sizes
    mean_to[own] = np.inf
    b = mean_to.min(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.nan_to_num((b - a) / np.maximum(a, b))
    scores[own_size == 1] = 0.0
    return float(scores.mean())
