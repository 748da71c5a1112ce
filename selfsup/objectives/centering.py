"""How a self-distillation teacher's scores become targets without collapse: centring by an EMA of their mean
(DINO) or Sinkhorn-Knopp normalisation (SwAV; DINOv2's default). Both are global: their sums are all-reduced,
so that two processes with half batches give what one process gives on the whole batch.

`weights` (M,) mark which rows count (1) and which are padding (0): iBOT's masked-patch slots are padded to a
fixed number per image so that the step has fixed shapes (see dinov2.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.distributed import all_reduce_sum
from selfsup.errors import ConfigError

CENTERINGS = ("ema", "sinkhorn_knopp")


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, temperature: float | torch.Tensor, iterations: int = 3,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """Targets (M, K) whose prototypes are used equally over the global batch and that sum to 1 per row:
    Q = exp(scores / temperature)^T, normalised to total 1, then `iterations` times: rows (prototypes) to 1/K
    each, columns (samples) to 1/M each; returned as M rows summing to 1."""
    q = torch.exp(scores.float() / temperature).T  # (K, M)
    if weights is not None:
        q = q * weights.float()
    count = torch.tensor(float(q.shape[1]), device=q.device) if weights is None else weights.float().sum()
    count = all_reduce_sum(count)
    q = q / all_reduce_sum(q.sum())
    prototypes = q.shape[0]
    for _ in range(iterations):
        q = q / all_reduce_sum(q.sum(dim=1, keepdim=True)) / prototypes
        q = q / q.sum(dim=0, keepdim=True).clamp_min(torch.finfo(q.dtype).tiny) / count
    return (q * count).T


class Centering(nn.Module):
    """Teacher targets from teacher scores (M, K): softmax((scores - centre) / temperature) with the centre an EMA
    (`momentum`) of the scores' global mean, updated after each training step; or Sinkhorn-Knopp."""

    def __init__(self, mode: str, dim: int, momentum: float = 0.9, iterations: int = 3) -> None:
        super().__init__()
        if mode not in CENTERINGS:
            raise ConfigError(f"objective.centering must be one of {', '.join(CENTERINGS)}, got '{mode}'")
        if not 0 <= momentum < 1:
            raise ConfigError(f"objective.center_momentum must be in [0, 1), got {momentum}")
        if iterations < 1:
            raise ConfigError(f"objective.sinkhorn_iterations must be at least 1, got {iterations}")
        self.mode = mode
        self.momentum = momentum
        self.iterations = iterations
        if mode == "ema":
            self.register_buffer("center", torch.zeros(1, dim))

    @torch.no_grad()
    def targets(self, scores: torch.Tensor, temperature: float | torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        if self.mode == "sinkhorn_knopp":
            return sinkhorn_knopp(scores, temperature, self.iterations, weights)
        return F.softmax((scores.float() - self.center) / temperature, dim=-1)

    @torch.no_grad()
    def update(self, scores: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """centre <- m centre + (1 - m) mean of the (weighted) scores of the global batch; nothing for SK."""
        if self.mode != "ema":
            return
        scores = scores.float()
        if weights is None:
            total = scores.sum(0, keepdim=True)
            count = torch.tensor(float(len(scores)), device=scores.device)
        else:
            total = (scores * weights.float().unsqueeze(-1)).sum(0, keepdim=True)
            count = weights.float().sum()
        mean = all_reduce_sum(total) / all_reduce_sum(count).clamp_min(1.0)
        self.center.mul_(self.momentum).add_(mean, alpha=1 - self.momentum)
