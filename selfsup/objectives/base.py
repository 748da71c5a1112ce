"""The contract every objective implements: what generic code (the module, the assembly layer, evaluation and the
monitors) may ask of an objective, so that none of it names a particular one.

An objective is an `nn.Module` built from its config with the run's `backbone` (plus its own keyword arguments)
and declares:

- `modality` (class attribute, one of MODALITIES): the data it trains on; `backbone_modality`: the run's backbone,
  when it differs (CLIP: image-text data, an image backbone). The config checks compare them before anything
  is built.
- `views`: the view specs the data module must produce for it (a list of dicts with a `key` and augmentation
  parameters, see selfsup/data/views.py; text objectives need none).
- `bind_data(facts)`: called once the data module exists, with its DataFacts (token ids, sequence lengths,
  image size); check the fit and take what the objective needs. Default: nothing.
- `forward(backbone, batch) -> StepOutput`: the loss, metrics to log, and the pooled features of the first
  view if it has them anyway (the online linear probe trains on them).
- `after_optimizer_step(backbone, step, total_steps)`: schedule-driven updates (an EMA target); `step_metrics()`:
  scalars that follow the schedule, logged each step.
- `eval_model(backbone)`: the model evaluation and the online monitors use. Default: the backbone itself; an
  objective whose trained model is more than the backbone (CLIP's dual encoder) returns that, with a
  `modality` of its own so that protocols can tell what it takes.
- Validation metrics of its own, beyond the mean of the per-batch metrics: `reset_validation()`,
  `update_validation(out, batch_size)` per validation batch, and `compute_validation(reduce_sum)` at the end,
  where `reduce_sum` sums a tensor over processes (MLM's perplexity over the whole split). Default: none.
- `visualize(backbone, batch)`: an optional picture for the run folder.

Adding an objective is this file's subclass in selfsup/objectives/ and its config in configs/objective/.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from selfsup.data_facts import DataFacts

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
    backbone_modality: ClassVar[str | None] = None  # None: the same as `modality`

    def __init__(self, views: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.views = [dict(v) for v in (views or [])]

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def bind_data(self, facts: DataFacts) -> None:
        """Take what the objective needs from the data (token ids, lengths) and check that they fit."""

    def eval_model(self, backbone: nn.Module) -> nn.Module:
        """The model that evaluation and the monitors embed with: the backbone, unless the objective trains more."""
        return backbone

    def reset_validation(self) -> None:
        """Before a validation pass: clear what update_validation accumulates."""

    def update_validation(self, out: StepOutput, batch_size: int) -> None:
        """After each validation batch: accumulate on the device (no host sync)."""

    def compute_validation(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """After the validation pass: metrics over the whole split; `reduce_sum` sums a tensor over processes."""
        return {}

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
