import numpy as np
import pytest

from model.clustering import auto_kmeans, kmeans
from model.metrics import (
    adjusted_rand_index,
    clustering_metrics,
    normalized_mutual_information,
    purity,
    retrieval_metrics,
    silhouette,
)


def separated(n_per_class: int = 20, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centers = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    vectors = np.concatenate([c + 0.05 * rng.standard_normal((n_per_class, 3)) for c in centers])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = [name for name in "abc" for _ in range(n_per_class)]
    return vectors.astype(np.float32), labels


def test_perfect_embeddings_score_one() -> None:
    vectors, labels = separated()
    result = retrieval_metrics(vectors, labels)
    assert result == {"precision_at_1": 1.0, "map_at_r": pytest.approx(1.0)}
    grouping = kmeans(vectors, 3)
    scores = clustering_metrics(labels, grouping.assignments, vectors)
    assert scores["purity"] == 1.0 and scores["nmi"] == pytest.approx(1.0)
    assert scores["ari"] == pytest.approx(1.0) and scores["silhouette"] > 0.8


def test_random_embeddings_score_near_chance() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((600, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = rng.integers(0, 2, 600).tolist()
    result = retrieval_metrics(vectors, labels)
    assert 0.4 < result["precision_at_1"] < 0.6
    assert result["map_at_r"] < 0.4
    scores = clustering_metrics(labels, kmeans(vectors, 2).assignments)
    assert scores["nmi"] < 0.05 and abs(scores["ari"]) < 0.05


def test_map_at_r_hand_computed() -> None:
    # query q (label a) with gallery: a at sim 0.9, b at 0.8, a at 0.7 -> R = 2
    # ranks: 1 relevant (P=1), 2 irrelevant -> AP@R = (1 + 0) / 2 = 0.5
    gallery = np.array([[0.9, 0.436], [0.8, 0.6], [0.7, 0.714]], dtype=np.float32)
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    result = retrieval_metrics(query, ["a"], gallery, ["a", "b", "a"])
    assert result["precision_at_1"] == 1.0
    assert result["map_at_r"] == pytest.approx(0.5)


def test_purity_hand_computed() -> None:
    assert purity(["a", "a", "b", "b", "b"], [0, 0, 0, 1, 1]) == pytest.approx(4 / 5)


def test_auto_k_finds_three_groups() -> None:
    vectors, _ = separated()
    assert auto_kmeans(vectors, max_k=6).k == 3


def test_kmeans_rejects_bad_k() -> None:
    vectors, _ = separated(2)
    with pytest.raises(ValueError):
        kmeans(vectors, 0)
    with pytest.raises(ValueError):
        kmeans(vectors, 100)


def test_nmi_hand_computed() -> None:
    # joint p: (a,0) 1/2, (b,0) 1/4, (b,1) 1/4; marginals a,b 1/2 each, clusters 3/4, 1/4
    # MI = 1/2 ln(4/3) + 1/4 ln(2/3) + 1/4 ln 2 = 0.215762
    # H(labels) = ln 2 = 0.693147, H(clusters) = 0.562335, NMI = MI / mean = 0.343712
    labels, clusters = ["a", "a", "b", "b"], [0, 0, 0, 1]
    assert normalized_mutual_information(labels, clusters) == pytest.approx(0.343712, abs=1e-6)
    assert normalized_mutual_information(labels, [5, 5, 7, 7]) == pytest.approx(1.0)
    assert normalized_mutual_information(labels, [0, 1, 0, 1]) == 0.0
    assert normalized_mutual_information(["a"] * 3, [0, 0, 0]) == 1.0  # nothing split


def test_ari_hand_computed() -> None:
    # 6 pairs: together in both 1, only in the labels 1, only in the clusters 0, apart 4
    # ARI = 2 (1*4 - 1*0) / ((1+1)(1+4) + (1+0)(0+4)) = 8 / 14
    assert adjusted_rand_index(["a", "a", "b", "b"], [0, 0, 1, 2]) == pytest.approx(8 / 14)
    assert adjusted_rand_index(["a", "a", "b", "b"], [1, 1, 0, 0]) == 1.0
    # together in both 1, only labels 1, only clusters 2, apart 2: 2 (1*2 - 1*2) = 0
    assert adjusted_rand_index(["a", "a", "b", "b"], [0, 0, 0, 1]) == 0.0


def test_silhouette_hand_computed() -> None:
    # cosine distances: d(p1,p2) = 0.4, d(p1,p3) = 1, d(p2,p3) = 0.2; p3 is alone (0)
    # p1: a = 0.4, b = 1 -> 0.6; p2: a = 0.4, b = 0.2 -> -0.5; mean 0.1 / 3
    points = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    assert silhouette(points, [0, 0, 1]) == pytest.approx(0.1 / 3, abs=1e-6)
    assert silhouette(points * 5, [0, 0, 1]) == pytest.approx(0.1 / 3, abs=1e-6)  # cosine
    assert silhouette(points, [0, 0, 0]) == 0.0 and silhouette(points, [0, 1, 2]) == 0.0


def test_silhouette_of_a_sample_is_seeded() -> None:
    vectors, labels = separated(n_per_class=50)
    clusters = [ord(label) for label in labels]
    full = silhouette(vectors, clusters)
    assert full > 0.8
    sampled = silhouette(vectors, clusters, sample=40)
    assert sampled == silhouette(vectors, clusters, sample=40) and sampled != full
    assert sampled == pytest.approx(full, abs=0.1)
