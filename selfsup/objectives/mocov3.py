"""MoCo v3 (Chen, Xie, He 2021): a query encoder (backbone, projector, predictor) matches a momentum encoder's key
of the other view among the keys of the whole global batch (InfoNCE, symmetrised over the two views).

The momentum encoder is the shared EMA teacher (objectives/ema.py) of the backbone and projector, with momentum
0.99 -> 1 on a cosine. Keys are gathered from every process, so negatives span the global batch. The ViT recipe's
frozen random patch projection is a backbone option (`backbone.freeze_patch_embed=true`).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.distributed import gather_with_grad, rank_and_world
from selfsup.errors import ConfigError
from selfsup.objectives.base import Objective, StepOutput
from selfsup.objectives.ema import EMATeacher, online_and_target
from selfsup.objectives.heads import projection_mlp


def moco_infonce(q: torch.Tensor, k: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """2 T x cross-entropy of this process's queries against all processes' keys, the positive being the key of
    the same sample (MoCo v3's scaling by 2 T). Returns (loss, accuracy); in float32."""
    with torch.autocast(q.device.type, enabled=False):
        q = F.normalize(q.float(), dim=1)
        keys = F.normalize(gather_with_grad(k.float()), dim=1)
        logits = q @ keys.T / temperature
    rank, _ = rank_and_world()
    positive = torch.arange(len(q), device=q.device) + rank * len(q)
    loss = F.cross_entropy(logits, positive) * 2 * temperature
    accuracy = (logits.argmax(dim=1) == positive).float().mean()
    return loss, accuracy


class MoCoV3(Objective):
    """Queries: backbone -> projector (BN MLP, last BN without affine) -> predictor. Keys: the EMA copy of backbone
    and projector, without gradients. Loss: moco_infonce(q1, k2) + moco_infonce(q2, k1).

    `projector_layers` 2 and `predictor_last_bn` false are the ResNet recipe; the ViT recipe uses 3 and true.
    """

    modality = "image"

    def __init__(self, backbone: nn.Module, views: list[dict[str, Any]], hidden_dim: int = 4096,
                 dim: int = 256, projector_layers: int = 2, predictor_last_bn: bool = False,
                 temperature: float = 0.2, base_momentum: float = 0.99) -> None:
        super().__init__(views)
        if len(self.views) != 2:
            raise ConfigError(f"MoCo v3 needs exactly two views in objective.views, got {len(self.views)}")
        if temperature <= 0:
            raise ConfigError(f"objective.temperature must be positive, got {temperature}")
        if projector_layers < 1:
            raise ConfigError(f"objective.projector_layers must be at least 1, got {projector_layers}")
        self.temperature = temperature
        self.projector = projection_mlp(backbone.num_features, hidden_dim, dim, projector_layers, last_bn=True)
        self.predictor = projection_mlp(dim, hidden_dim, dim, 2, last_bn=predictor_last_bn)
        self.momentum_encoder = EMATeacher({"backbone": backbone, "projector": self.projector}, base_momentum)

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> StepOutput:
        images = torch.cat([batch[v["key"]] for v in self.views])
        h, q, k = online_and_target(backbone, self.projector, self.predictor, self.momentum_encoder, images)
        (q1, q2), (k1, k2) = q.chunk(2), k.chunk(2)
        loss1, accuracy1 = moco_infonce(q1, k2, self.temperature)
        loss2, accuracy2 = moco_infonce(q2, k1, self.temperature)
        return StepOutput.of_two_views(loss1 + loss2, {"contrastive_accuracy": (accuracy1 + accuracy2) / 2}, h)

    def step_metrics(self) -> dict[str, torch.Tensor]:
        return {"teacher_momentum": self.momentum_encoder.momentum}

    def after_optimizer_step(self, backbone: nn.Module, step: int, total_steps: int) -> None:
        self.momentum_encoder.update({"backbone": backbone, "projector": self.projector}, step, total_steps)
