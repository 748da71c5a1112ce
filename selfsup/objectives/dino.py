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

from selfsup.distributed import rank_and_world
from selfsup.errors import ConfigError
from selfsup.objectives.base import Objective, StepOutput
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


def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              student_temp: float, teacher_temp: float | torch.Tensor) -> torch.Tensor:
    """Mean over the pairs (teacher view i, student view j != i) of the cross-entropy between the teacher's centred,
    sharpened softmax and the student's softmax at `student_temp`; in float32."""
    targets = [F.softmax((t.float() - center) / teacher_temp, dim=-1) for t in teacher]
    log_probs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    terms = [-(target * log_probs[j]).sum(-1).mean() for i, target in enumerate(targets)
             for j in range(len(log_probs)) if j != i]
    return torch.stack(terms).mean()


def same_size_runs(views: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive views of one spatial size, in order (global crops, then local crops)."""
    runs: list[list[torch.Tensor]] = []
    for view in views:
        if runs and runs[-1][0].shape[1:] == view.shape[1:]:
            runs[-1].append(view)
        else:
            runs.append([view])
    return runs


def teacher_temperature(step: int, total_steps: int, start: float, end: float, warmup_fraction: float) -> float:
    """Linear from `start` to `end` over the first `warmup_fraction` of the run, then `end`."""
    warmup = warmup_fraction * max(1, total_steps)
    return end if step >= warmup else start + (end - start) * step / warmup


class DINO(Objective):
    """Student: backbone -> DINO head on every view. Teacher: EMA copy of both, on the global views, without
    gradients. Centre: EMA (`center_momentum`) of the teacher's batch-mean output over all processes."""

    modality = "image"

    def __init__(self, backbone: nn.Module, views: list[dict[str, Any]], out_dim: int = 65536,
                 hidden_dim: int = 2048, bottleneck_dim: int = 256, student_temp: float = 0.1,
                 teacher_temp: float = 0.07, warmup_teacher_temp: float = 0.04,
                 warmup_teacher_temp_fraction: float = 0.3, center_momentum: float = 0.9,
                 base_momentum: float = 0.996) -> None:
        super().__init__(views)
        if len(self.views) < GLOBAL_VIEWS:
            raise ConfigError(f"DINO needs at least two views (the global crops) in objective.views, got "
                              f"{len(self.views)}")
        for name, value in (("student_temp", student_temp), ("teacher_temp", teacher_temp),
                            ("warmup_teacher_temp", warmup_teacher_temp)):
            if value <= 0:
                raise ConfigError(f"objective.{name} must be positive, got {value}")
        if not 0 <= warmup_teacher_temp_fraction <= 1 or not 0 <= center_momentum < 1:
            raise ConfigError("objective.warmup_teacher_temp_fraction must be in [0, 1] and objective.center_momentum "
                              f"in [0, 1), got {warmup_teacher_temp_fraction} and {center_momentum}")
        self.student_temp = student_temp
        self.temperatures = (warmup_teacher_temp, teacher_temp, warmup_teacher_temp_fraction)
        self.center_momentum = center_momentum
        self.head = DINOHead(backbone.num_features, out_dim, hidden_dim, bottleneck_dim)
        self.teacher = EMATeacher({"backbone": backbone, "head": self.head}, base_momentum)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("teacher_temp", torch.tensor(float(warmup_teacher_temp)))

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> StepOutput:
        views = [batch[v["key"]] for v in self.views]
        student, features = [], None
        for group in same_size_runs(views):  # multi-crop: one backbone pass per size
            h = backbone(torch.cat(group))
            features = h[: len(views[0])].detach() if features is None else features
            student.extend(self.head(h).chunk(len(group)))
        with torch.no_grad():
            teacher = self.teacher["head"](self.teacher["backbone"](torch.cat(views[:GLOBAL_VIEWS])))
        loss = dino_loss(student, list(teacher.chunk(GLOBAL_VIEWS)), self.center, self.student_temp,
                         self.teacher_temp)
        if self.training:
            self.update_center(teacher)
        return StepOutput(loss, features=features)

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """center <- m center + (1 - m) mean of the teacher outputs of the global batch."""
        batch_sum = teacher.float().sum(0, keepdim=True)
        count = torch.tensor(float(len(teacher)), device=teacher.device)
        if rank_and_world()[1] > 1:
            torch.distributed.all_reduce(batch_sum)
            torch.distributed.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(batch_sum / count, alpha=1 - self.center_momentum)

    def step_metrics(self) -> dict[str, torch.Tensor]:
        return {"teacher_temp": self.teacher_temp, "teacher_momentum": self.teacher.momentum}

    def after_optimizer_step(self, backbone: nn.Module, step: int, total_steps: int) -> None:
        """The teacher follows the student (EMA); the teacher temperature follows its warm-up."""
        self.teacher.update({"backbone": backbone, "head": self.head}, step, total_steps)
        self.teacher_temp.fill_(teacher_temperature(step, total_steps, *self.temperatures))
