"""SimCLR (Chen et al. 2020): two views, a projector, and the NT-Xent loss with negatives from every GPU."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.distributed import gather_with_grad, rank_and_world
from selfsup.errors import ConfigError
from selfsup.objectives.base import Objective, StepOutput
from selfsup.objectives.heads import mlp


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent of this rank's pairs (z1[i], z2[i]) against all 2N - 1 other embeddings of the global batch.

    Returns (loss, accuracy): the mean loss over this rank's 2n anchors, and how often the positive has
    the highest similarity. Computed in float32 whatever the autocast dtype.
    """
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    n = len(z1)
    rank, world = rank_and_world()
    candidates = torch.cat([gather_with_grad(z1), gather_with_grad(z2)])  # (2N, d): all view-1, then all view-2
    total = n * world
    anchors = torch.cat([z1, z2])
    with torch.autocast(z1.device.type, enabled=False):  # float32 logits under bf16 autocast too
        logits = anchors @ candidates.T / temperature  # (2n, 2N)
    own = torch.arange(n, device=z1.device) + rank * n
    self_index = torch.cat([own, own + total])
    positive = torch.cat([own + total, own])
    logits = logits.masked_fill(F.one_hot(self_index, 2 * total).bool(), float("-inf"))
    loss = F.cross_entropy(logits, positive)
    accuracy = (logits.argmax(dim=1) == positive).float().mean()
    return loss, accuracy


class SimCLR(Objective):
    """Backbone features -> projector MLP (hidden 2048, BN, output 128) -> NT-Xent between the two views."""

    modality = ("image", "audio")  # images, or audio as log-mel spectrograms

    def __init__(self, backbone: nn.Module, views: list[dict[str, Any]], temperature: float = 0.2,
                 projector_hidden_dim: int = 2048, projector_dim: int = 128, projector_bn: bool = True) -> None:
        super().__init__(views)
        if len(self.views) != 2:
            raise ConfigError(f"SimCLR needs exactly two views in objective.views, got {len(self.views)}")
        if temperature <= 0:
            raise ConfigError(f"objective.temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.projector = mlp(backbone.num_features, projector_hidden_dim, projector_dim, projector_bn)

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> StepOutput:
        first, second = (batch[v["key"]] for v in self.views)
        h = backbone(torch.cat([first, second]))  # one pass for both views
        z1, z2 = self.projector(h).chunk(2)
        loss, accuracy = nt_xent(z1, z2, self.temperature)
        return StepOutput.of_two_views(loss, {"contrastive_accuracy": accuracy}, h)
