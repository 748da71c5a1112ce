"""Barlow Twins (Zbontar et al. 2021): the cross-correlation matrix of two views' batch-normalised embeddings is
pushed towards the identity.

The embeddings are standardised over the global batch (the official code's SyncBatchNorm without affine
parameters) and the cross-correlation is computed on the global batch: gathered from every process with
gradients, so two processes with half batches give one process's loss and gradients. (The official code instead
all-reduces the matrix without gradient, which scales its gradients by 1 / processes; on one GPU both agree.)
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from selfsup.distributed import gather_with_grad
from selfsup.errors import ConfigError
from selfsup.objectives.base import Objective, StepOutput
from selfsup.objectives.heads import projection_mlp
from selfsup.objectives.vicreg import off_diagonal


def standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per dimension over the batch: (z - mean) / sqrt(biased variance + eps), BatchNorm's training mode."""
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051) -> tuple[torch.Tensor, dict]:
    """sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2 with C the cross-correlation over the global batch; in
    float32 whatever the autocast dtype. Also returns the two sums."""
    with torch.autocast(z1.device.type, enabled=False):
        g1, g2 = standardise(gather_with_grad(z1.float())), standardise(gather_with_grad(z2.float()))
        c = g1.T @ g2 / len(g1)
        on_diagonal = (torch.diagonal(c) - 1).pow(2).sum()
        redundancy = off_diagonal(c).pow(2).sum()
    return on_diagonal + lambd * redundancy, {"on_diagonal": on_diagonal, "off_diagonal": redundancy}


class BarlowTwins(Objective):
    """Backbone features -> projector (3 layers of 8192 with BatchNorm) -> Barlow Twins' loss between the views."""

    modality = "image"

    def __init__(self, backbone: nn.Module, views: list[dict[str, Any]], projector_dim: int = 8192,
                 projector_layers: int = 3, projector_bn: bool = True, lambd: float = 0.0051) -> None:
        super().__init__(views)
        if len(self.views) != 2:
            raise ConfigError(f"Barlow Twins needs exactly two views in objective.views, got {len(self.views)}")
        if lambd < 0:
            raise ConfigError(f"objective.lambd must be at least 0 (the paper: 0.0051), got {lambd}")
        if projector_layers < 1:
            raise ConfigError(f"objective.projector_layers must be at least 1, got {projector_layers}")
        self.lambd = lambd
        self.projector = projection_mlp(backbone.num_features, projector_dim, projector_dim, projector_layers,
                                        projector_bn)

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> StepOutput:
        first, second = (batch[v["key"]] for v in self.views)
        h = backbone(torch.cat([first, second]))
        z1, z2 = self.projector(h).chunk(2)
        loss, terms = barlow_twins_loss(z1, z2, self.lambd)
        return StepOutput.of_two_views(loss, {k: v.detach() for k, v in terms.items()}, h)
