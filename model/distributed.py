"""Training as several processes (``torchrun``): which process this is, and the few
collective operations the training loop needs.

Run as a single process, every helper here is the identity and nothing is initialised. Under
``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`start` joins the process group
over gloo, also on a machine with CUDA: training keeps its tensors on the CPU, and NCCL
only moves GPU tensors. Every rank holds the whole data set and the same
seeded P x K sampler; each takes its own share of every epoch's batches. Rank 0 alone
evaluates, writes checkpoints and the model, and reports progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that evaluates, writes files and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` concatenated along the first dimension, in rank order.
        Gradients flow back to each rank's own part, so a loss over the gathered batch
        trains every rank's network (labels and other tensors without gradients work too)."""
        if not self.distributed:
            return tensor
        if tensor.requires_grad:
            return torch.cat(dist_nn.all_gather(tensor))
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank: so that all ranks stop at the same step."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def average_gradients(self, module: nn.Module) -> None:
        """Averages the gradients of a module that DistributedDataParallel does not wrap."""
        if not self.distributed:
            return
        for param in module.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
                param.grad /= self.world_size

    def broadcast(self, module: nn.Module) -> None:
        """Gives every rank rank 0's parameters and buffers."""
        if not self.distributed:
            return
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)

    def checksums(self, module: nn.Module) -> list[float]:
        """Every rank's sum of ``module``'s parameters, in rank order: equal when the ranks
        hold the same weights."""
        with torch.no_grad():
            local = torch.stack([p.double().sum() for p in module.parameters()]).sum()
        return self.gather(local.reshape(1)).tolist()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def start(timeout_s: float = 600.0) -> Processes:
    """This process's place, joining the process group when launched by ``torchrun``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Processes()
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    return Processes(rank=dist.get_rank(), world_size=dist.get_world_size())


def stop(processes: Processes) -> None:
    if processes.distributed and dist.is_initialized():
        dist.destroy_process_group()
