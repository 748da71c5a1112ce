"""The EMA teacher shared by BYOL and the self-distillation objectives: its momentum schedule and its update."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup.errors import ConfigError
from selfsup.objectives.ema import EMATeacher, cosine_momentum


def test_momentum_follows_the_cosine_from_base_to_final():
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert cosine_momentum(50, 100, 0.9, 0.99) == pytest.approx(0.945)
    assert cosine_momentum(500, 100, 0.9, 0.99) == pytest.approx(0.99)  # past the end: held
    steps = [cosine_momentum(k, 100, 0.9) for k in range(101)]
    assert steps == sorted(steps)


def test_update_is_the_weighted_average_and_the_copies_take_no_gradient():
    torch.manual_seed(0)
    students = {"a": nn.Linear(3, 2), "b": nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))}
    teacher = EMATeacher(students, base_momentum=0.9, final_momentum=0.99)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in [*students["a"].parameters(), *students["b"].parameters()]:
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.update(students, step=25, total_steps=100)
    m = cosine_momentum(25, 100, 0.9, 0.99)
    assert float(teacher.momentum) == pytest.approx(m)
    for name, student in students.items():
        for key, value in student.state_dict().items():
            expected = m * before[f"copies.{name}.{key}"] + (1 - m) * value
            torch.testing.assert_close(teacher[name].state_dict()[key], expected)


def test_a_momentum_outside_zero_to_final_is_refused():
    with pytest.raises(ConfigError, match="objective.base_momentum must be in"):
        EMATeacher({"a": nn.Linear(2, 2)}, base_momentum=0.999, final_momentum=0.99)


def test_the_linear_schedule_moves_evenly_from_base_to_final():
    """I-JEPA's target encoder: 0.996 -> 1 in equal steps."""
    torch.manual_seed(0)
    student = nn.Linear(3, 2)
    teacher = EMATeacher({"net": student}, 0.996, schedule="linear")
    with torch.no_grad():
        student.weight.add_(1.0)
    before = teacher["net"].weight.clone()
    teacher.update({"net": student}, 25, 100)
    assert teacher.momentum.item() == pytest.approx(0.996 + 0.004 * 0.25)
    torch.testing.assert_close(teacher["net"].weight, 0.997 * before + 0.003 * student.weight)
    teacher.update({"net": student}, 100, 100)
    assert teacher.momentum.item() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="cosine or linear"):
        EMATeacher({"net": student}, 0.99, schedule="step")
