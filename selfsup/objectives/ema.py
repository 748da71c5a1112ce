"""The EMA teacher that BYOL's target network is, and that DINO's teacher, MoCo v3's momentum encoder and I-JEPA's
target encoder are: frozen copies of some of the student's modules, moved after each optimizer step towards the
student by an exponential moving average whose momentum rises from `base` to `final` over the run, on a cosine
(BYOL, DINO, MoCo v3) or linearly (I-JEPA).

The copies keep the student's train/eval mode (a ResNet teacher normalises with its batch's statistics, as BYOL's
and DINO's do) but drop no paths or units. They are ordinary parameters without gradients, so checkpoints hold
them and a resumed run continues them exactly; the momentum is a function of the step, so it needs no state of
its own.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from selfsup.errors import ConfigError
from selfsup.optim import cosine_ramp


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """`base` at step 0, rising on a half cosine to `final` at the last step."""
    return cosine_ramp(step, total_steps, base, final)


def linear_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """`base` at step 0, rising linearly to `final` at the last step (I-JEPA's schedule)."""
    return base + (final - base) * min(max(step / max(1, total_steps), 0.0), 1.0)


SCHEDULES = {"cosine": cosine_momentum, "linear": linear_momentum}


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy that takes no gradients and is never thinned: DINO's and DINOv2's teachers have no stochastic depth
    (timm's DropPath) and no dropout."""
    twin = copy.deepcopy(module).requires_grad_(False)
    for part in twin.modules():
        if hasattr(part, "drop_prob"):
            part.drop_prob = 0.0
        elif isinstance(part, nn.Dropout):
            part.p = 0.0
    return twin


def online_and_target(backbone: nn.Module, projector: nn.Module, predictor: nn.Module, target: "EMATeacher",
                      images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stacked views through the online network (backbone -> projector -> predictor) and, without gradients, the
    EMA target (its backbone -> projector): (backbone features, predictions, targets). BYOL's online and target
    paths, and MoCo v3's queries and keys."""
    h = backbone(images)
    predictions = predictor(projector(h))
    with torch.no_grad():
        targets = target["projector"](target["backbone"](images))
    return h, predictions, targets


class EMATeacher(nn.Module):
    """Frozen copies of the student modules named in `students`; `teacher[name]` is the copy of `students[name]`."""

    def __init__(self, students: dict[str, nn.Module], base_momentum: float, final_momentum: float = 1.0,
                 key: str = "objective.base_momentum", schedule: str = "cosine") -> None:
        super().__init__()
        if not 0 <= base_momentum <= final_momentum <= 1:
            raise ConfigError(f"{key} must be in [0, 1] and at most the final momentum {final_momentum}, "
                              f"got {base_momentum}")
        if schedule not in SCHEDULES:
            raise ConfigError(f"the momentum schedule must be cosine or linear, got '{schedule}'")
        self.schedule = SCHEDULES[schedule]
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum
        self.copies = nn.ModuleDict({name: frozen_copy(m) for name, m in students.items()})
        # the current momentum, on the device for logging: a Python float would be copied there every step (a sync)
        self.register_buffer("momentum", torch.tensor(float(base_momentum)), persistent=False)

    def follow(self, name: str, student: nn.Module) -> None:
        """Add a frozen copy of one more student module (a subclass's extra head)."""
        self.copies[name] = frozen_copy(student)

    def __getitem__(self, name: str) -> nn.Module:
        return self.copies[name]

    @torch.no_grad()
    def update(self, students: dict[str, nn.Module], step: int, total_steps: int) -> None:
        """teacher <- m teacher + (1 - m) student, parameter by parameter, with m on the schedule at `step`."""
        momentum = self.schedule(step, total_steps, self.base_momentum, self.final_momentum)
        self.momentum.fill_(momentum)
        teacher = [p for name in self.copies for p in self.copies[name].parameters()]
        student = [p for name in self.copies for p in students[name].parameters()]
        torch._foreach_lerp_(teacher, student, 1 - momentum)
