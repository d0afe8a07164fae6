"""Class-balanced P x K batches: P classes, K images of each, so every batch holds positives
and negatives for every anchor (what in-batch tuple mining needs)."""

from __future__ import annotations

from collections.abc import Iterator

import torch


class PKSampler:
    """Yields index batches of ``p`` classes times ``k`` images, covering the data once per
    epoch.

    Each class's images are drawn from a shuffled queue (reshuffled when it runs out), so an
    epoch sees every image about once instead of sampling with replacement; a batch's classes
    are drawn in proportion to their queue sizes. ``repeats`` (one integer per image) puts an
    image that many times in its class's queue: oversampling of a small data set. With fewer
    than ``p`` classes every class is used. One epoch is ``len(queue entries) // (p * k)``
    batches (at least one). The order depends only on ``seed`` and the epoch set by
    :meth:`set_epoch`, so a resumed run repeats an uninterrupted run's batches.

    With ``world_size`` processes, every process draws the same epoch of batches and takes
    every ``world_size``-th one from its ``rank`` on: the ranks' batches are disjoint and
    together cover the epoch (rounded down to a multiple of ``world_size`` batches, at least
    one each), and every rank runs the same number of steps.
    """

    def __init__(
        self,
        targets: torch.Tensor,
        p: int,
        k: int,
        seed: int = 0,
        repeats: torch.Tensor | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError("rank must be in [0, world_size)")
        if k < 2:
            raise ValueError("k must be at least 2 so that every anchor has a positive")
        self.classes = torch.unique(targets)
        if len(self.classes) < 2:
            raise ValueError("need at least two classes")
        if repeats is None:
            repeats = torch.ones(len(targets), dtype=torch.long)
        if len(repeats) != len(targets) or bool((repeats < 1).any()):
            raise ValueError("repeats needs one positive count per image")
        self.p = min(p, len(self.classes))
        self.k = k
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.members = [
            torch.nonzero(targets == c).flatten().repeat_interleave(repeats[targets == c])
            for c in self.classes
        ]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches per epoch of this rank."""
        batches = sum(len(m) for m in self.members) // (self.p * self.k)
        return max(1, batches // self.world_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for number, batch in enumerate(self._epoch_batches()):
            if number % self.world_size == self.rank:
                yield batch

    def _epoch_batches(self) -> Iterator[torch.Tensor]:
        """The epoch's batches of all ranks, the same on every rank."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        queues = [m[torch.randperm(len(m), generator=generator)] for m in self.members]
        cursors = [0] * len(queues)
        sizes = torch.tensor([float(len(m)) for m in self.members])
        for _ in range(len(self) * self.world_size):
            chosen = torch.multinomial(sizes, self.p, replacement=False, generator=generator)
            parts = []
            for c in chosen.tolist():
                taken: list[torch.Tensor] = []
                need = self.k
                while need > 0:
                    if cursors[c] >= len(queues[c]):
                        order = torch.randperm(len(self.members[c]), generator=generator)
                        queues[c], cursors[c] = self.members[c][order], 0
                    part = queues[c][cursors[c] : cursors[c] + need]
                    cursors[c] += len(part)
                    need -= len(part)
                    taken.append(part)
                parts.append(torch.cat(taken))
            yield torch.cat(parts)
