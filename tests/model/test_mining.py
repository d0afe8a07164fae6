import math

import torch

from model.mining import mine_pairs, mine_quartets, mine_triplets, pairwise_distances


def points(*angles_deg: float) -> torch.Tensor:
    return torch.tensor(
        [[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles_deg]
    )


def test_pairwise_distances_match_hand_computed_values() -> None:
    emb = points(0, 90, 180)
    dist = pairwise_distances(emb)
    expected = torch.tensor(
        [[0, math.sqrt(2), 2], [math.sqrt(2), 0, math.sqrt(2)], [2, math.sqrt(2), 0]]
    )
    assert torch.allclose(dist, expected, atol=1e-6)


def test_pairwise_distances_have_finite_gradient_at_zero() -> None:
    emb = points(0, 0).requires_grad_(True)
    pairwise_distances(emb).sum().backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()


def test_all_mining_lists_every_valid_triplet() -> None:
    labels = torch.tensor([0, 0, 1])
    a, p, n = mine_triplets(pairwise_distances(points(0, 10, 90)), labels, "all", 0.2)
    assert sorted(zip(a.tolist(), p.tolist(), n.tolist(), strict=True)) == [(0, 1, 2), (1, 0, 2)]


def test_batch_hard_picks_farthest_positive_and_nearest_negative() -> None:
    # class 0 at 0, 20 and 100 degrees; class 1 at 40 and 180 degrees
    emb = points(0, 20, 100, 40, 180)
    labels = torch.tensor([0, 0, 0, 1, 1])
    a, p, n = mine_triplets(pairwise_distances(emb), labels, "batch_hard", 0.2)
    chosen = dict(zip(a.tolist(), zip(p.tolist(), n.tolist(), strict=True), strict=True))
    assert chosen[0] == (2, 3)  # farthest positive 100 deg, nearest negative 40 deg
    assert chosen[1] == (2, 3)
    assert chosen[3] == (4, 1)  # anchor 40: positive 180, nearest negative 20


def test_semi_hard_picks_negative_just_beyond_positive() -> None:
    # anchor 0 deg, positive 30 deg; negatives at 20 (hard), 35 (semi-hard), 60 and 170 deg
    emb = points(0, 30, 20, 35, 60, 170)
    labels = torch.tensor([0, 0, 1, 1, 1, 1])
    a, p, n = mine_triplets(pairwise_distances(emb), labels, "semi_hard", margin=0.2)
    chosen = {(ai, pi): ni for ai, pi, ni in zip(a.tolist(), p.tolist(), n.tolist(), strict=True)}
    assert chosen[(0, 1)] == 3


def test_semi_hard_falls_back_to_the_farthest_negative() -> None:
    emb = points(0, 30, 10, 170)  # no negative beyond the positive within the margin
    labels = torch.tensor([0, 0, 1, 1])
    a, p, n = mine_triplets(pairwise_distances(emb), labels, "semi_hard", margin=0.01)
    chosen = {(ai, pi): ni for ai, pi, ni in zip(a.tolist(), p.tolist(), n.tolist(), strict=True)}
    assert chosen[(0, 1)] == 3


def test_random_mining_only_returns_valid_triplets() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    emb = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    gen = torch.Generator().manual_seed(0)
    a, p, n = mine_triplets(pairwise_distances(emb), labels, "random", 0.2, gen)
    assert len(a) == 6
    assert (labels[a] == labels[p]).all() and (a != p).all()
    assert (labels[a] != labels[n]).all()


def test_pairs_all_and_mined() -> None:
    labels = torch.tensor([0, 0, 1])
    dist = pairwise_distances(points(0, 10, 90))
    i, j, same = mine_pairs(dist, labels, "all", 0.2)
    assert sorted(zip(i.tolist(), j.tolist(), same.tolist(), strict=True)) == [
        (0, 1, True),
        (0, 2, False),
        (1, 2, False),
    ]
    i, j, same = mine_pairs(dist, labels, "batch_hard", 0.2)
    assert (same == (labels[i] == labels[j])).all()


def test_quartets_need_a_third_class_for_the_second_negative() -> None:
    emb = points(0, 10, 90, 100, 200)
    two = mine_quartets(pairwise_distances(emb[:4]), torch.tensor([0, 0, 1, 1]), "batch_hard", 0.2)
    assert (two[3] == -1).all()
    labels = torch.tensor([0, 0, 1, 1, 2])
    a, _, n1, n2 = mine_quartets(pairwise_distances(emb), labels, "batch_hard", 0.2)
    valid = n2 >= 0
    assert valid.any()
    assert (labels[n2[valid]] != labels[a[valid]]).all()
    assert (labels[n2[valid]] != labels[n1[valid]]).all()
