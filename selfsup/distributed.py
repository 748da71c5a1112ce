"""Collectives that keep gradients: what contrastive losses need for negatives from every GPU."""
from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' `x` concatenated in rank order (rank r's rows at r*n ... r*n+n-1).

    Gradients flow back to each rank's own rows, summed over the losses of all ranks; with DDP averaging
    parameter gradients over ranks, the result equals one process computing the mean loss on the whole batch.
    """
    _, world = rank_and_world()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)
