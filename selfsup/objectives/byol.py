"""BYOL (Grill et al. 2020): an online network predicts an EMA target network's projection of the other view."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError
from selfsup.objectives.base import Objective, StepOutput
from selfsup.objectives.ema import EMATeacher, cosine_momentum, online_and_target
from selfsup.objectives.heads import mlp


def target_momentum(step: int, total_steps: int, base: float) -> float:
    """BYOL's tau = 1 - (1 - base) (cos(pi k / K) + 1) / 2: `base` at the start, 1 at the end."""
    return cosine_momentum(step, total_steps, base, 1.0)


def regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(prediction, target) per sample: the MSE of the L2-normalised vectors."""
    return 2 - 2 * F.cosine_similarity(prediction.float(), target.float(), dim=-1)


class BYOL(Objective):
    """Online: backbone -> projector (4096 -> 256) -> predictor (4096 -> 256). Target: an EMA copy of the
    online backbone and projector (objectives/ema.py), run without gradients. The loss is symmetric over the two
    views."""

    modality = ("image", "audio")  # images, or audio as log-mel spectrograms

    def __init__(self, backbone: nn.Module, views: list[dict[str, Any]], projector_hidden_dim: int = 4096,
                 projector_dim: int = 256, predictor_hidden_dim: int = 4096, base_momentum: float = 0.99) -> None:
        super().__init__(views)
        if len(self.views) != 2:
            raise ConfigError(f"BYOL needs exactly two views in objective.views, got {len(self.views)}")
        if not 0 <= base_momentum < 1:
            raise ConfigError(f"objective.base_momentum must be in [0, 1), got {base_momentum}")
        self.projector = mlp(backbone.num_features, projector_hidden_dim, projector_dim)
        self.predictor = mlp(projector_dim, predictor_hidden_dim, projector_dim)
        self.target = EMATeacher({"backbone": backbone, "projector": self.projector}, base_momentum)

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> StepOutput:
        images = torch.cat([batch[v["key"]] for v in self.views])
        h, p, z = online_and_target(backbone, self.projector, self.predictor, self.target, images)
        (p1, p2), (z1, z2) = p.chunk(2), z.chunk(2)
        loss = (regression_loss(p1, z2) + regression_loss(p2, z1)).mean()
        return StepOutput.of_two_views(loss, {}, h)

    def step_metrics(self) -> dict[str, torch.Tensor]:
        return {"target_momentum": self.target.momentum}

    def after_optimizer_step(self, backbone: nn.Module, step: int, total_steps: int) -> None:
        """target <- tau target + (1 - tau) online, with tau on the cosine schedule at this step."""
        self.target.update({"backbone": backbone, "projector": self.projector}, step, total_steps)
