"""Class-balanced P x K batches: P classes, K images of each, so every batch holds positives
and negatives for every anchor (what in-batch tuple mining needs)."""

from __future__ import annotations

from collections.abc import Iterator

import torch


class PKSampler:
    """Yields index batches of ``p`` classes times ``k`` images.

    With fewer than ``p`` classes every class is used. A class with fewer than ``k`` images is
    sampled with replacement. One epoch is ``len(targets) // (p * k)`` batches (at least one).
    """

    def __init__(self, targets: torch.Tensor, p: int, k: int, seed: int = 0) -> None:
        if k < 2:
            raise ValueError("k must be at least 2 so that every anchor has a positive")
        self.targets = targets
        self.classes = torch.unique(targets)
        if len(self.classes) < 2:
            raise ValueError("need at least two classes")
        self.p = min(p, len(self.classes))
        self.k = k
        self.members = [torch.nonzero(targets == c).flatten() for c in self.classes]
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return max(1, len(self.targets) // (self.p * self.k))

    def __iter__(self) -> Iterator[torch.Tensor]:
        for _ in range(len(self)):
            chosen = torch.randperm(len(self.classes), generator=self.generator)[: self.p]
            parts = []
            for c in chosen.tolist():
                members = self.members[c]
                if len(members) >= self.k:
                    pick = torch.randperm(len(members), generator=self.generator)[: self.k]
                else:
                    pick = torch.randint(len(members), (self.k,), generator=self.generator)
                parts.append(members[pick])
            yield torch.cat(parts)
