"""The contract every objective implements: what generic code (the module, the assembly layer, evaluation and the
monitors) may ask of an objective, so that none of it names a particular one.

An objective is an `nn.Module` built from its config with the run's `backbone` (plus its own keyword arguments)
and declares:

- `modality` (class attribute, one of selfsup/modalities.py's MODALITIES, or a tuple of those it accepts: MAE,
  SimCLR and BYOL train on images and on audio spectrograms): the data it trains on; `backbone_modality`: the
  run's backbone, when it differs (CLIP: image-text or audio-text data, an image or audio backbone). The config
  checks compare them before anything is built; the backbone must read the data (modalities.reads).
- `views`: the view specs the data module must produce for it (a list of dicts with a `key` and augmentation
  parameters, see selfsup/data/views.py; text objectives need none). A spec with `copies: n` stands for n views
  of its parameters, keyed `{key}1` ... `{key}n` (DINO's local crops), drawn independently.
- `bind_data(facts)`: called once the data module exists, with its DataFacts (token ids, sequence lengths,
  image size); check the fit and take what the objective needs. Default: nothing.
- `forward(backbone, batch) -> StepOutput`: the loss, metrics to log, and the pooled features of the first
  view (and of the second) if it has them anyway (the online linear probe trains on the first; the health
  monitor measures the pair's alignment and uniformity). A teacher-student objective logs its teacher's
  distribution health as metrics (`teacher_entropy`, `teacher_kl_uniform`: see dino.py).
- `bind_schedule(steps_per_epoch, total_steps)`: called once the run's length is known, for schedules given in
  epochs (DINO's teacher-temperature warm-up). `after_optimizer_step(backbone, step, total_steps)`:
  schedule-driven updates (an EMA target); `step_metrics()`: scalars that follow the schedule, logged each step;
  `frozen_parameters(step)`: parameters held still at that step (their gradients are dropped before the
  optimizer step: DINO's last layer during the first epoch).
- `eval_model(backbone)`: the model evaluation, export and the online monitors use. Default: the backbone itself;
  a teacher-student objective may return its teacher's copy (DINO, as its papers evaluate); an objective whose
  trained model is more than the backbone (CLIP's dual encoder) returns that, with a `modality` of its own so
  that protocols can tell what it takes.
- Validation metrics of its own, beyond the mean of the per-batch metrics: `reset_validation()`,
  `update_validation(out, batch_size)` per validation batch, and `compute_validation(reduce_sum)` at the end,
  where `reduce_sum` sums a tensor over processes (MLM's perplexity over the whole split). Default: none.
- `visualize(backbone, batch)`: an optional picture for the run folder.

Adding an objective is this file's subclass in selfsup/objectives/ and its config in configs/objective/. What
objectives share beyond this contract are general mechanisms, each usable by any objective:
- the EMA teacher (ema.py: BYOL's target, DINO's teacher, MoCo v3's momentum encoder, I-JEPA's target encoder);
- the projection heads (heads.py) and the collectives that make batch statistics global (selfsup/distributed.py);
- shared view specs: `- views@_here_: byol_pair` in a config's defaults takes configs/objective/views/byol_pair.yaml;
- per-sample randomness keyed by sample (keyed_random.py: one stream per use), for masks that do not depend on the
  batch's composition, the process count or a resume;
- ViT capabilities: encode a subset of patches (`keep`), replace some by a mask token (`masked`), attend only to
  some (`key_valid`: padding in fixed-shape batches), and the backbone options an objective's recipe may ask for
  (`backbone.freeze_patch_embed`, `backbone.pool=mean`);
- optimizer options (`optim.no_decay_lr_scale`, `optim.weight_decay_end`, `optim.clip_grad_norm`) and presets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from selfsup.data_facts import DataFacts
from selfsup.errors import ConfigError


@dataclass
class StepOutput:
    """A training step's loss (what is back-propagated) and metrics (logged as they are, detached).

    `features`: the detached pooled backbone features (B, D) of the batch's first view, when the objective has
    them from its forward anyway; the online linear probe (callbacks/online_monitors.py) trains on them.
    `second_features`: the same for the second view of the same samples, where the objective has two views; the
    health monitor's alignment and uniformity (callbacks/health.py) read the pair.
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    features: torch.Tensor | None = None
    second_features: torch.Tensor | None = None

    @classmethod
    def of_two_views(cls, loss: torch.Tensor, metrics: dict[str, torch.Tensor],
                     features: torch.Tensor) -> "StepOutput":
        """The output of a two-view objective whose backbone saw both views stacked: features (2B, D)."""
        first, second = features.detach().chunk(2)
        return cls(loss, metrics, features=first, second_features=second)


class Objective(nn.Module):
    """A pretext task: a loss on a batch, plus whatever heads it trains beside the backbone.

    Subclasses set `modality` (a modality, or a tuple of them) and receive `views`, the list of view specs the data
    module must produce for it (each a dict with a `key` and augmentation parameters; see selfsup/data/views.py).
    """

    modality: ClassVar[str | tuple[str, ...]]
    backbone_modality: ClassVar[str | tuple[str, ...] | None] = None  # None: the same as `modality`

    def __init__(self, views: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.views = expand_copies(views or [])

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def bind_data(self, facts: DataFacts) -> None:
        """Take what the objective needs from the data (token ids, lengths) and check that they fit."""

    def eval_model(self, backbone: nn.Module) -> nn.Module:
        """The model that evaluation and the monitors embed with: the backbone, unless the objective trains more."""
        return backbone

    def export_heads(self) -> dict[str, nn.Module]:
        """Trained heads that an export format has a place for, by kind. `masked_lm`: BERT's prediction head
        (`dense`, GELU, `norm`, a decoder tied to the backbone's input embedding, `bias`), exported as the
        transformers *ForMaskedLM model. Default: none (the export holds the backbone alone)."""
        return {}

    def reset_validation(self) -> None:
        """Before a validation pass: clear what update_validation accumulates."""

    def update_validation(self, out: StepOutput, batch_size: int) -> None:
        """After each validation batch: accumulate on the device (no host sync)."""

    def compute_validation(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """After the validation pass: metrics over the whole split; `reduce_sum` sums a tensor over processes."""
        return {}

    def bind_schedule(self, steps_per_epoch: int, total_steps: int) -> None:
        """Take the run's length, for schedules given in epochs. Default: nothing."""

    def frozen_parameters(self, step: int) -> list[nn.Parameter]:
        """Parameters that keep their values at optimizer step `step` (no update, no weight decay)."""
        return []

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


def expand_copies(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The view specs with each `copies: n` spec written out as n specs keyed `{key}1` ... `{key}n`."""
    expanded = []
    for view in views:
        view = dict(view)
        if "copies" not in view:
            expanded.append(view)
            continue
        copies = view.pop("copies")
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
            raise ConfigError(f"objective.views {view.get('key', '?')} copies must be a whole number of at least 1, "
                              f"got {copies}")
        expanded.extend({**view, "key": f"{view['key']}{i + 1}"} for i in range(copies))
    return expanded
