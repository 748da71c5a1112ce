"""VICReg (Bardes, Ponce, LeCun 2022): variance-invariance-covariance regularisation of two views' embeddings.

Invariance is the mean squared error between the two embeddings of a sample; variance (a hinge on each
dimension's standard deviation) and covariance (the squared off-diagonal covariances) are statistics of the global
batch, gathered from every process with gradients as the official code's FullGatherLayer does, so that two
processes with half batches give one process's loss and gradients.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.distributed import gather_with_grad
from selfsup.errors import ConfigError
from selfsup.objectives.base import Objective, StepOutput
from selfsup.objectives.heads import projection_mlp


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def variance_term(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Mean over dimensions of relu(1 - std): pushes every dimension's standard deviation over the batch to 1."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(1 - std).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """Sum of the squared off-diagonal covariances over the batch, divided by the dimension."""
    z = z - z.mean(dim=0)
    cov = z.T @ z / (len(z) - 1)
    return off_diagonal(cov).pow(2).sum() / z.shape[1]


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, invariance: float = 25.0, variance: float = 25.0,
                covariance: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of the three terms, and each term; in float32 whatever the autocast dtype.

    Invariance is averaged over this process's pairs (DDP's gradient averaging makes it the global mean);
    variance and covariance are computed on the global batch (every process computes the same value).
    """
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = z1.float(), z2.float()
        terms = {"invariance": F.mse_loss(z1, z2)}
        g1, g2 = gather_with_grad(z1), gather_with_grad(z2)
        terms["variance"] = (variance_term(g1) + variance_term(g2)) / 2
        terms["covariance"] = covariance_term(g1) + covariance_term(g2)
        loss = invariance * terms["invariance"] + variance * terms["variance"] + covariance * terms["covariance"]
    return loss, terms


class VICReg(Objective):
    """Backbone features -> expander (3 layers of 8192 with BatchNorm) -> VICReg's loss between the two views."""

    modality = "image"

    def __init__(self, backbone: nn.Module, views: list[dict[str, Any]], expander_dim: int = 8192,
                 expander_layers: int = 3, expander_bn: bool = True, invariance_weight: float = 25.0,
                 variance_weight: float = 25.0, covariance_weight: float = 1.0) -> None:
        super().__init__(views)
        if len(self.views) != 2:
            raise ConfigError(f"VICReg needs exactly two views in objective.views, got {len(self.views)}")
        for name, value in (("invariance_weight", invariance_weight), ("variance_weight", variance_weight),
                            ("covariance_weight", covariance_weight)):
            if value < 0:
                raise ConfigError(f"objective.{name} must be at least 0, got {value}")
        if expander_layers < 1:
            raise ConfigError(f"objective.expander_layers must be at least 1, got {expander_layers}")
        self.weights = (invariance_weight, variance_weight, covariance_weight)
        self.expander = projection_mlp(backbone.num_features, expander_dim, expander_dim, expander_layers,
                                       expander_bn)

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> StepOutput:
        first, second = (batch[v["key"]] for v in self.views)
        h = backbone(torch.cat([first, second]))  # one pass for both views
        z1, z2 = self.expander(h).chunk(2)
        loss, terms = vicreg_loss(z1, z2, *self.weights)
        return StepOutput.of_two_views(loss, {k: v.detach() for k, v in terms.items()}, h)
