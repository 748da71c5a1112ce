"""Collectives: those that keep gradients (what contrastive losses need for negatives from every GPU), and the
in-place sums that make statistics global (self-distillation's centre and Sinkhorn-Knopp)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over all processes, in place (no gradient); `t` itself in a single process."""
    if rank_and_world()[1] > 1:
        dist.all_reduce(t)
    return t


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' `x` concatenated in rank order (rank r's rows at r*n ... r*n+n-1).

    Gradients flow back to each rank's own rows, summed over the losses of all ranks; with DDP averaging
    parameter gradients over ranks, the result equals one process computing the mean loss on the whole batch.
    """
    _, world = rank_and_world()
    if world == 1:
        return x
    # The functional collective traces into a torch.compile graph; torch.distributed.nn.functional.all_gather
    # (deprecated) refuses to be compiled. Its backward is a reduce-scatter sum, as the docstring says.
    from torch.distributed._functional_collectives import all_gather_tensor_autograd

    return all_gather_tensor_autograd(x.contiguous(), gather_dim=0, group=dist.group.WORLD)
