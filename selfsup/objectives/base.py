"""The interface every objective implements."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

MODALITIES = ("image", "text", "image-text")


@dataclass
class StepOutput:
    """A training step's loss (what is back-propagated) and metrics (logged as they are, detached).

    `features`: the detached pooled backbone features (B, D) of the batch's first view, when the objective has
    them from its forward anyway; the online linear probe (callbacks/online_monitors.py) trains on them.
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    features: torch.Tensor | None = None


class Objective(nn.Module):
    """A pretext task: a loss on a batch, plus whatever heads it trains beside the backbone.

    Subclasses set `modality` (one of MODALITIES) and receive `views`, the list of view specs the data
    module must produce for it (each a dict with a `key` and augmentation parameters; see selfsup/data/views.py).
    """

    modality: ClassVar[str]

    def __init__(self, views: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.views = [dict(v) for v in (views or [])]

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_optimizer_step(self, backbone: nn.Module, step: int, total_steps: int) -> None:
        """Called after each optimizer step (`step` of `total_steps` done): e.g. BYOL's target update."""

    def step_metrics(self) -> dict[str, torch.Tensor]:
        """Scalars that follow the schedule rather than the batch (e.g. BYOL's target momentum), logged each step:
        0-d tensors on the module's device (a Python number would be copied to the GPU each step, a sync)."""
        return {}

    @torch.no_grad()
    def visualize(self, backbone: nn.Module, batch: dict[str, Any]) -> torch.Tensor | None:
        """An optional picture of what the objective does on a batch: (3, H, W) floats in [0, 1]."""
        return None
