"""DINO (Caron et al. 2021): self-distillation without labels. A student (backbone + DINO head) matches, on every
view, the centred and sharpened output distribution that an EMA teacher (objectives/ema.py) gives on the other
global views.

The first two views are the global crops, seen by teacher and student; any further views (local crops, usually
smaller: a view's `size`) are seen by the student only. Views of one size go through the backbone together.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.distributed import all_reduce_sum, rank_and_world
from selfsup.errors import ConfigError
from selfsup.objectives.base import Objective, StepOutput
from selfsup.objectives.centering import Centering
from selfsup.objectives.ema import EMATeacher

GLOBAL_VIEWS = 2


class DINOHead(nn.Module):
    """3-layer MLP (GELU) to a `bottleneck_dim` vector, L2-normalised, then `out_dim` prototype scores.

    The last layer is the paper's weight-normalised linear layer with its norm fixed to 1: written here as
    cosine scores against L2-normalised prototype rows, which is the same function and traces into one graph
    (torch's weight_norm parametrization adds hooks that torch.compile breaks on).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(features), dim=-1)
        return x @ F.normalize(self.prototypes, dim=-1).T


def dino_loss(student: list[torch.Tensor], targets: list[torch.Tensor], student_temp: float) -> torch.Tensor:
    """Mean over the pairs (teacher view i, student view j != i) of the cross-entropy between the teacher's
    targets (centred and sharpened distributions, see centering.py) and the student's softmax at `student_temp`;
    in float32."""
    log_probs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    terms = [-(target * log_probs[j]).sum(-1).mean() for i, target in enumerate(targets)
             for j in range(len(log_probs)) if j != i]
    return torch.stack(terms).mean()


def distribution_health(probabilities: torch.Tensor) -> dict[str, torch.Tensor]:
    """Two signs of the two collapses of self-distillation, from the teacher's target distributions (B, K):
    `teacher_entropy`, the mean entropy of a sample's distribution (log K when every output is uniform), and
    `teacher_kl_uniform`, the KL divergence of the global batch's mean distribution from uniform (log K when every
    sample puts its mass on the same prototype). With even use of the prototypes the KL is about log(K / B) for a
    global batch of B < K samples, so compare it at one batch size; Sinkhorn-Knopp centring keeps it near 0 by
    construction (it balances the prototypes' use)."""
    p = probabilities.detach().float()
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean()
    _, world = rank_and_world()
    mean = all_reduce_sum(p.mean(0)) / world  # every process has as many samples
    kl = (mean * torch.log(mean.clamp_min(1e-12) * p.shape[-1])).sum()
    return {"teacher_entropy": entropy, "teacher_kl_uniform": kl}


def same_size_runs(views: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive views of one spatial size, in order (global crops, then local crops)."""
    runs: list[list[torch.Tensor]] = []
    for view in views:
        if runs and runs[-1][0].shape[1:] == view.shape[1:]:
            runs[-1].append(view)
        else:
            runs.append([view])
    return runs


def teacher_temperature(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear from `start` to `end` over the first `warmup_steps` steps, then `end`."""
    return end if step >= warmup_steps else start + (end - start) * step / warmup_steps


EVALUATED = ("teacher", "student")


class DINO(Objective):
    """Student: backbone -> DINO head on every view. Teacher: EMA copy of both, on the global views, without
    gradients. Targets: the teacher's scores centred (`centering`: an EMA centre, or Sinkhorn-Knopp) and sharpened
    by the teacher temperature, which warms up over `warmup_teacher_temp_epochs` (or a fraction of the run).

    `evaluate`: which backbone evaluation, the online monitors and export use: the teacher (default; the papers
    evaluate it, and it is the better one) or the student. `freeze_last_layer_epochs`: the prototypes are held
    still for that long (the paper's first epoch), which keeps the head from collapsing while the teacher is poor.
    """

    modality = "image"

    def __init__(self, backbone: nn.Module, views: list[dict[str, Any]], out_dim: int = 65536,
                 hidden_dim: int = 2048, bottleneck_dim: int = 256, student_temp: float = 0.1,
                 teacher_temp: float = 0.07, warmup_teacher_temp: float = 0.04,
                 warmup_teacher_temp_epochs: float | None = None, warmup_teacher_temp_fraction: float = 0.3,
                 centering: str = "ema", center_momentum: float = 0.9, sinkhorn_iterations: int = 3,
                 base_momentum: float = 0.996, freeze_last_layer_epochs: float = 1.0,
                 evaluate: str = "teacher") -> None:
        super().__init__(views)
        if len(self.views) < GLOBAL_VIEWS:
            raise ConfigError(f"{type(self).__name__} needs at least two views (the global crops) in "
                              f"objective.views, got {len(self.views)}")
        for name, value in (("student_temp", student_temp), ("teacher_temp", teacher_temp),
                            ("warmup_teacher_temp", warmup_teacher_temp)):
            if value <= 0:
                raise ConfigError(f"objective.{name} must be positive, got {value}")
        if not 0 <= warmup_teacher_temp_fraction <= 1:
            raise ConfigError(f"objective.warmup_teacher_temp_fraction must be in [0, 1], got "
                              f"{warmup_teacher_temp_fraction}")
        for name, value in (("warmup_teacher_temp_epochs", warmup_teacher_temp_epochs or 0),
                            ("freeze_last_layer_epochs", freeze_last_layer_epochs)):
            if value < 0:
                raise ConfigError(f"objective.{name} must be at least 0, got {value}")
        if evaluate not in EVALUATED:
            raise ConfigError(f"objective.evaluate must be teacher or student, got '{evaluate}'")
        self.student_temp = student_temp
        self.temperatures = (warmup_teacher_temp, teacher_temp)
        self.warmup = (warmup_teacher_temp_epochs, warmup_teacher_temp_fraction)
        self.freeze_last_layer_epochs = freeze_last_layer_epochs
        self.evaluate = evaluate
        self.schedule = (1, 1)  # steps per epoch, total steps: bind_schedule sets them
        self.head = DINOHead(backbone.num_features, out_dim, hidden_dim, bottleneck_dim)
        self.centering = Centering(centering, out_dim, center_momentum, sinkhorn_iterations)
        # DINO's own pair: a subclass's students() names modules it makes later, and adds with teacher.follow
        self.teacher = EMATeacher(DINO.students(self, backbone), base_momentum)
        self.register_buffer("teacher_temp", torch.tensor(float(warmup_teacher_temp)))

    def students(self, backbone: nn.Module) -> dict[str, nn.Module]:
        """The student modules the teacher follows, by name (a subclass adds its own with `teacher.follow`)."""
        return {"backbone": backbone, "head": self.head}

    def bind_schedule(self, steps_per_epoch: int, total_steps: int) -> None:
        self.schedule = (steps_per_epoch, total_steps)
        self.teacher_temp.fill_(self.teacher_temperature(0))

    def teacher_temperature(self, step: int) -> float:
        steps_per_epoch, total_steps = self.schedule
        epochs, fraction = self.warmup
        warmup = epochs * steps_per_epoch if epochs is not None else fraction * total_steps
        return teacher_temperature(step, max(1, round(warmup)), *self.temperatures)

    def frozen_parameters(self, step: int) -> list[nn.Parameter]:
        return [self.head.prototypes] if step < round(self.freeze_last_layer_epochs * self.schedule[0]) else []

    def eval_model(self, backbone: nn.Module) -> nn.Module:
        return self.teacher["backbone"] if self.evaluate == "teacher" else backbone

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> StepOutput:
        views = [batch[v["key"]] for v in self.views]
        student, global_features = [], None
        for group in same_size_runs(views):  # multi-crop: one backbone pass per size
            h = backbone(torch.cat(group))
            global_features = h[: GLOBAL_VIEWS * len(views[0])] if global_features is None else global_features
            student.extend(self.head(h).chunk(len(group)))
        with torch.no_grad():
            features = self.teacher["backbone"](torch.cat(views[:GLOBAL_VIEWS]))
            teacher = self.teacher["head"](features)
        targets = self.centering.targets(teacher, self.teacher_temp)
        loss = dino_loss(student, list(targets.chunk(GLOBAL_VIEWS)), self.student_temp)
        if self.training:
            self.centering.update(teacher)
        evaluated = features if self.evaluate == "teacher" else global_features.detach()
        first, second = evaluated.chunk(GLOBAL_VIEWS)
        return StepOutput(loss, distribution_health(targets), features=first, second_features=second)

    def step_metrics(self) -> dict[str, torch.Tensor]:
        return {"teacher_temp": self.teacher_temp, "teacher_momentum": self.teacher.momentum}

    def after_optimizer_step(self, backbone: nn.Module, step: int, total_steps: int) -> None:
        """The teacher follows the student (EMA); the teacher temperature follows its warm-up."""
        self.teacher.update(self.students(backbone), step, total_steps)
        self.teacher_temp.fill_(self.teacher_temperature(step))
