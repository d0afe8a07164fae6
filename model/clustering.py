"""k-means grouping of embeddings with FAISS, with ``k`` chosen by silhouette when asked."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from model.metrics import silhouette


@dataclass
class Clustering:
    k: int
    assignments: np.ndarray  # (N,) cluster index per vector
    centroids: np.ndarray  # (k, D)


def kmeans(vectors: np.ndarray, k: int, seed: int = 0, iterations: int = 25) -> Clustering:
    """Spherical k-means (centroids re-normalised), best of several seeded restarts."""
    n, dim = vectors.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of vectors ({n})")
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    km = faiss.Kmeans(
        dim,
        k,
        niter=iterations,
        nredo=3,
        seed=seed,
        spherical=True,
        min_points_per_centroid=1,
        max_points_per_centroid=max(256, n // k + 1),
        verbose=False,
    )
    km.train(data)
    _, assignments = km.index.search(data, 1)
    return Clustering(k, assignments.ravel().astype(np.int64), np.asarray(km.centroids))


def nearest_centroid(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The index of each vector's most similar centroid (inner product: unit vectors and
    spherical k-means centroids), as k-means itself assigns them."""
    return np.argmax(vectors @ centroids.T, axis=1).astype(np.int64)


def auto_kmeans(vectors: np.ndarray, max_k: int = 10, seed: int = 0) -> Clustering:
    """Tries k = 2..max_k and keeps the clustering with the highest cosine silhouette."""
    n = vectors.shape[0]
    if n < 3:
        return kmeans(vectors, 1, seed)
    best: tuple[float, Clustering] | None = None
    for k in range(2, min(max_k, n - 1) + 1):
        result = kmeans(vectors, k, seed)
        score = silhouette(vectors, result.assignments.tolist())
        if best is None or score > best[0]:
            best = (score, result)
    assert best is not None
    return best[1]


def project_2d(vectors: np.ndarray) -> np.ndarray:
    """The first two principal components of ``vectors`` ``(N, 2)``, for plotting them."""
    if len(vectors) < 2:
        return np.zeros((len(vectors), 2))
    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    points = centred @ components[:2].T
    return np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
