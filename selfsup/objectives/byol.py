"""BYOL (Grill et al. 2020): an online network predicts an EMA target network's projection of the other view."""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError
from selfsup.objectives.base import Objective, StepOutput
from selfsup.objectives.heads import mlp


def target_momentum(step: int, total_steps: int, base: float) -> float:
    """tau = 1 - (1 - base) (cos(pi k / K) + 1) / 2: `base` at the start, 1 at the end."""
    progress = min(max(step / max(1, total_steps), 0.0), 1.0)
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


def regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(prediction, target) per sample: the MSE of the L2-normalised vectors."""
    return 2 - 2 * F.cosine_similarity(prediction.float(), target.float(), dim=-1)


class BYOL(Objective):
    """Online: backbone -> projector (4096 -> 256) -> predictor (4096 -> 256). Target: an EMA copy of the
    online backbone and projector, run without gradients. The loss is symmetric over the two views.

    The target's weights are ordinary (non-trainable) parameters of this module, so checkpoints keep them.
    """

    modality = "image"

    def __init__(self, backbone: nn.Module, views: list[dict[str, Any]], projector_hidden_dim: int = 4096,
                 projector_dim: int = 256, predictor_hidden_dim: int = 4096, base_momentum: float = 0.99) -> None:
        super().__init__(views)
        if len(self.views) != 2:
            raise ConfigError(f"BYOL needs exactly two views in objective.views, got {len(self.views)}")
        if not 0 <= base_momentum < 1:
            raise ConfigError(f"objective.base_momentum must be in [0, 1), got {base_momentum}")
        self.base_momentum = base_momentum
        self.projector = mlp(backbone.num_features, projector_hidden_dim, projector_dim)
        self.predictor = mlp(projector_dim, predictor_hidden_dim, projector_dim)
        self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        # the current momentum, on the device for logging: a Python float would be copied there every step (a sync)
        self.register_buffer("logged_momentum", torch.tensor(float(base_momentum)), persistent=False)

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> StepOutput:
        images = torch.cat([batch[v["key"]] for v in self.views])
        h = backbone(images)
        p1, p2 = self.predictor(self.projector(h)).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_backbone(images)).chunk(2)
        loss = (regression_loss(p1, z2) + regression_loss(p2, z1)).mean()
        return StepOutput(loss, features=h[: len(images) // 2].detach())

    def step_metrics(self) -> dict[str, torch.Tensor]:
        return {"target_momentum": self.logged_momentum}

    @torch.no_grad()
    def after_optimizer_step(self, backbone: nn.Module, step: int, total_steps: int) -> None:
        """target <- tau target + (1 - tau) online, with tau on the cosine schedule at this step."""
        momentum = target_momentum(step, total_steps, self.base_momentum)
        self.logged_momentum.fill_(momentum)
        online = [*backbone.parameters(), *self.projector.parameters()]
        target = [*self.target_backbone.parameters(), *self.target_projector.parameters()]
        torch._foreach_lerp_(target, online, 1 - momentum)
