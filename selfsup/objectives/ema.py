"""The EMA teacher that BYOL's target network is, and that DINO's teacher and MoCo v3's momentum encoder are: frozen
copies of some of the student's modules, moved after each optimizer step towards the student by an exponential
moving average whose momentum follows a cosine from `base` to `final` over the run.

The copies are ordinary parameters without gradients, so checkpoints hold them and a resumed run continues them
exactly; the momentum is a function of the step, so it needs no state of its own.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from selfsup.errors import ConfigError


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """final - (final - base) (cos(pi k / K) + 1) / 2: `base` at step 0, `final` at the last step."""
    progress = min(max(step / max(1, total_steps), 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


class EMATeacher(nn.Module):
    """Frozen copies of the student modules named in `students`; `teacher[name]` is the copy of `students[name]`."""

    def __init__(self, students: dict[str, nn.Module], base_momentum: float, final_momentum: float = 1.0,
                 key: str = "objective.base_momentum") -> None:
        super().__init__()
        if not 0 <= base_momentum <= final_momentum <= 1:
            raise ConfigError(f"{key} must be in [0, 1] and at most the final momentum {final_momentum}, "
                              f"got {base_momentum}")
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum
        self.copies = nn.ModuleDict({name: copy.deepcopy(m).requires_grad_(False) for name, m in students.items()})
        # the current momentum, on the device for logging: a Python float would be copied there every step (a sync)
        self.register_buffer("momentum", torch.tensor(float(base_momentum)), persistent=False)

    def __getitem__(self, name: str) -> nn.Module:
        return self.copies[name]

    @torch.no_grad()
    def update(self, students: dict[str, nn.Module], step: int, total_steps: int) -> None:
        """teacher <- m teacher + (1 - m) student, parameter by parameter, with m on the cosine at `step`."""
        momentum = cosine_momentum(step, total_steps, self.base_momentum, self.final_momentum)
        self.momentum.fill_(momentum)
        teacher = [p for name in self.copies for p in self.copies[name].parameters()]
        student = [p for name in self.copies for p in students[name].parameters()]
        torch._foreach_lerp_(teacher, student, 1 - momentum)
