"""Metric losses of the siamese (pairs), triplet and quartet networks.

Each loss takes the embeddings of one batch and their labels: every image goes through the
one shared network once, and the miner picks which tuples of the batch the loss sees.
Embedding each member of a tuple separately with the same weights gives the same vectors,
so this is the weight-shared siamese/triplet/quartet network, computed without duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.config import ModelType
from model.mining import Strategy, mine_pairs, mine_quartets, mine_triplets, pairwise_distances


@dataclass
class LossResult:
    loss: torch.Tensor
    tuples: int
    active: int  # tuples with a non-zero loss


def _mean_of_active(losses: torch.Tensor) -> tuple[torch.Tensor, int]:
    active = int((losses > 1e-12).sum())
    if active == 0:
        return losses.sum() * 0.0, 0
    return losses.sum() / active, active


class TupleLoss(nn.Module):
    """Base class: ``margin``, the mining ``strategy`` and a seeded generator for ``random``."""

    def __init__(self, margin: float, mining: Strategy, seed: int = 0) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError("margin must be positive")
        self.margin = margin
        self.mining = mining
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossResult:
        raise NotImplementedError


class ContrastiveLoss(TupleLoss):
    """Pairs: ``d^2`` for same-label pairs, ``max(0, margin - d)^2`` for the others
    (Hadsell, Chopra and LeCun, 2006); averaged over the pairs with a non-zero loss."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossResult:
        dist = pairwise_distances(embeddings)
        i, j, same = mine_pairs(dist, labels, self.mining, self.margin, self.generator)
        d = dist[i, j]
        losses = torch.where(same, d.pow(2), (self.margin - d).clamp(min=0).pow(2))
        loss, active = _mean_of_active(losses)
        return LossResult(loss, len(losses), active)


class TripletMarginLoss(TupleLoss):
    """Triplets: ``max(0, d(a, p) - d(a, n) + margin)``.

    With ``all`` mining the mean is over the triplets with a non-zero loss (batch-all), so the
    many easy triplets do not dilute the gradient; otherwise over all mined triplets.
    """

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossResult:
        dist = pairwise_distances(embeddings)
        a, p, n = mine_triplets(dist, labels, self.mining, self.margin, self.generator)
        losses = (dist[a, p] - dist[a, n] + self.margin).clamp(min=0)
        active = int((losses > 1e-12).sum())
        if self.mining == "all":
            loss, _ = _mean_of_active(losses)
        else:
            loss = losses.mean() if len(losses) else embeddings.sum() * 0.0
        return LossResult(loss, len(losses), active)


class QuartetLoss(TupleLoss):
    """Quartets (Chen et al., 2017): the triplet term plus
    ``max(0, d(a, p) - d(n1, n2) + margin / 2)`` where ``n2``'s class differs from both the
    anchor's and ``n1``'s. With two classes no such ``n2`` exists and the loss is the triplet
    loss."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossResult:
        dist = pairwise_distances(embeddings)
        a, p, n1, n2 = mine_quartets(dist, labels, self.mining, self.margin, self.generator)
        first = (dist[a, p] - dist[a, n1] + self.margin).clamp(min=0)
        has_second = n2 >= 0
        second = (
            dist[a, p][has_second] - dist[n1[has_second], n2[has_second]] + self.margin / 2
        ).clamp(min=0)
        losses = torch.cat([first, second])
        loss, active = _mean_of_active(losses)
        if self.mining != "all":
            loss = losses.mean() if len(losses) else embeddings.sum() * 0.0
        return LossResult(loss, len(first), active)


def build_loss(model_type: ModelType, margin: float, mining: Strategy, seed: int = 0) -> TupleLoss:
    losses: dict[str, type[TupleLoss]] = {
        "siamese": ContrastiveLoss,
        "triplet": TripletMarginLoss,
        "quartet": QuartetLoss,
    }
    if model_type not in losses:
        raise ValueError(f"unknown model type {model_type!r}")
    return losses[model_type](margin, mining, seed)


class NormSoftmaxLoss(nn.Module):
    """A cosine classification head over the L2-normalised embedding (normalised softmax,
    Zhai and Wu, 2019): ``cross_entropy(scale * cos(e, w_c))`` with label smoothing.

    It pre-trains the feature extractor far faster than tuple losses from a random start; the
    class weights ``w_c`` are training state only, never part of the exported network.
    """

    def __init__(
        self, classes: int, dim: int, scale: float = 16.0, label_smoothing: float = 0.1
    ) -> None:
        super().__init__()
        if classes < 2:
            raise ValueError("the cosine head needs at least two classes")
        self.weight = nn.Parameter(torch.randn(classes, dim) / dim**0.5)
        self.scale = scale
        self.label_smoothing = label_smoothing

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        weight = nn.functional.normalize(self.weight, dim=1)
        return self.scale * nn.functional.normalize(embeddings, dim=1) @ weight.T

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossResult:
        logits = self.logits(embeddings)
        loss = nn.functional.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        wrong = int((logits.argmax(dim=1) != labels).sum())
        return LossResult(loss, len(labels), wrong)


class InstanceLoss(nn.Module):
    """Instance discrimination over two views (NT-Xent, as in SimCLR): rows ``i`` and
    ``i + n`` of a ``(2n, D)`` batch are two augmentations of one image; each view must pick
    its twin out of the other ``2n - 2`` views at ``temperature``.

    Beside a class loss it keeps what tells two images of one class apart, so an edited copy
    of a stored image finds that image rather than any image of its class.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor) -> LossResult:
        if len(embeddings) % 2:
            raise ValueError("instance loss needs two views of every image")
        n = len(embeddings) // 2
        unit = nn.functional.normalize(embeddings, dim=1)
        similarity = unit @ unit.T / self.temperature
        similarity = similarity.masked_fill(
            torch.eye(2 * n, dtype=torch.bool, device=unit.device), float("-inf")
        )
        twins = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(unit.device)
        loss = nn.functional.cross_entropy(similarity, twins)
        missed = int((similarity.argmax(dim=1) != twins).sum())
        return LossResult(loss, 2 * n, missed)
