"""In-batch tuple selection: which pairs, triplets and quartets a batch trains on.

Strategies:
- ``all``: every valid tuple (batch-all); learns reliably from a random start.
- ``batch_hard``: per anchor, the farthest positive and the nearest negative.
- ``semi_hard``: per (anchor, positive), the nearest negative that is still farther than the
  positive (FaceNet); where none is, the farthest negative.
- ``random``: per (anchor, positive), a uniformly random negative.

Distances are Euclidean between L2-normalised embeddings, so they lie in [0, 2].
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

Strategy = Literal["all", "batch_hard", "semi_hard", "random"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _draw(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row, in proportion to ``weights``; drawn on the CPU (where the seeded
    generator lives, so a run draws the same whatever device it trains on)."""
    return torch.multinomial(weights.cpu(), 1, generator=generator).flatten().to(weights.device)


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix ``(N, N)``; the gradient stays finite at zero distance."""
    squared = embeddings.pow(2).sum(dim=1)
    d2 = squared[:, None] + squared[None, :] - 2.0 * embeddings @ embeddings.T
    d2 = d2.clamp(min=0.0)
    zero = d2 <= 1e-12
    dist = torch.sqrt(torch.where(zero, torch.ones_like(d2), d2))
    return torch.where(zero, torch.zeros_like(dist), dist)


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def mine_triplets(
    dist: torch.Tensor,
    labels: torch.Tensor,
    strategy: Strategy,
    margin: float,
    generator: torch.Generator | None = None,
) -> Triplets:
    """Returns index tensors ``(anchor, positive, negative)`` into the batch."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown mining strategy {strategy!r}")
    positive, negative = _masks(labels)
    dist = dist.detach()
    if strategy == "all":
        valid = positive[:, :, None] & negative[:, None, :]
        a, p, n = torch.nonzero(valid, as_tuple=True)
        return a, p, n
    if strategy == "batch_hard":
        has_both = positive.any(dim=1) & negative.any(dim=1)
        anchors = torch.nonzero(has_both).flatten()
        far_pos = torch.where(positive, dist, torch.full_like(dist, -1.0)).argmax(dim=1)
        near_neg = torch.where(negative, dist, torch.full_like(dist, float("inf"))).argmin(dim=1)
        return anchors, far_pos[anchors], near_neg[anchors]

    a, p = torch.nonzero(positive, as_tuple=True)
    row_neg = negative[a]
    keep = row_neg.any(dim=1)
    a, p, row_neg = a[keep], p[keep], row_neg[keep]
    if strategy == "random":
        n = _draw(row_neg.float(), generator)
        return a, p, n
    d_an = dist[a]
    d_ap = dist[a, p][:, None]
    semi = row_neg & (d_an > d_ap) & (d_an < d_ap + margin)
    nearest_semi = torch.where(semi, d_an, torch.full_like(d_an, float("inf"))).argmin(dim=1)
    farthest = torch.where(row_neg, d_an, torch.full_like(d_an, -1.0)).argmax(dim=1)
    n = torch.where(semi.any(dim=1), nearest_semi, farthest)
    return a, p, n


def mine_pairs(
    dist: torch.Tensor,
    labels: torch.Tensor,
    strategy: Strategy,
    margin: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(i, j, same)``: index pairs and whether they share a label.

    ``all`` gives every unordered pair; the other strategies give the anchor-positive and
    anchor-negative pairs of the triplets they would select.
    """
    if strategy == "all":
        i, j = torch.triu_indices(len(labels), len(labels), offset=1, device=labels.device)
        return i, j, labels[i] == labels[j]
    a, p, n = mine_triplets(dist, labels, strategy, margin, generator)
    pairs = torch.unique(torch.stack([torch.cat([a, a]), torch.cat([p, n])], dim=1), dim=0)
    i, j = pairs[:, 0], pairs[:, 1]
    return i, j, labels[i] == labels[j]


def mine_quartets(
    dist: torch.Tensor,
    labels: torch.Tensor,
    strategy: Strategy,
    margin: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(anchor, positive, negative1, negative2)``.

    ``negative2`` has a label different from both the anchor's and ``negative1``'s (the
    quadruplet loss compares the anchor-positive distance with the distance between two
    negatives of different classes); ``-1`` marks triplets for which the batch holds none,
    as always happens with two classes. ``random`` picks it at random, every other strategy
    picks the one nearest to ``negative1``.
    """
    a, p, n1 = mine_triplets(dist, labels, strategy, margin, generator)
    valid = (labels[None, :] != labels[a][:, None]) & (labels[None, :] != labels[n1][:, None])
    has = valid.any(dim=1)
    if strategy == "random":
        weights = valid.float()
        weights[~has] = 1.0
        n2 = _draw(weights, generator)
    else:
        d = dist.detach()[n1]
        n2 = torch.where(valid, d, torch.full_like(d, float("inf"))).argmin(dim=1)
    n2 = torch.where(has, n2, torch.full_like(n2, -1))
    return a, p, n1, n2
