"""DINO's pieces against references written here: the loss over every (teacher view, other student view) pair,
the weight-normalised last layer, the centre's EMA, the teacher temperature's warm-up, and a teacher that takes no
gradient and follows the student."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import FlatBackbone
from torch import nn

from selfsup.errors import ConfigError
from selfsup.objectives.dino import DINO, DINOHead, dino_loss, teacher_temperature
from selfsup.objectives.ema import cosine_momentum

VIEWS = [{"key": "global1"}, {"key": "global2"}, {"key": "local1"}, {"key": "local2"}]


def dino(**kwargs) -> tuple[nn.Module, DINO]:
    torch.manual_seed(0)
    backbone = FlatBackbone()
    settings = {"out_dim": 16, "hidden_dim": 8, "bottleneck_dim": 4, **kwargs}
    return backbone, DINO(backbone, VIEWS, **settings)


def test_dino_loss_is_the_mean_cross_entropy_over_pairs_of_different_views():
    torch.manual_seed(1)
    student = [torch.randn(5, 7) for _ in range(4)]
    teacher = [torch.randn(5, 7) for _ in range(2)]
    center = torch.randn(1, 7)
    total, pairs = 0.0, 0
    for i in range(2):
        for j in range(4):
            if i == j:
                continue
            for b in range(5):
                t = [math.exp((teacher[i][b, k] - center[0, k]) / 0.04) for k in range(7)]
                s = [math.exp(student[j][b, k] / 0.1) for k in range(7)]
                total += -sum(t[k] / sum(t) * math.log(s[k] / sum(s)) for k in range(7)) / 5
            pairs += 1
    assert pairs == 6
    targets = [F.softmax((t - center) / 0.04, dim=-1) for t in teacher]
    torch.testing.assert_close(dino_loss(student, targets, 0.1), torch.tensor(total / pairs), rtol=1e-5, atol=1e-5)


def test_head_last_layer_is_weight_norm_with_unit_norm():
    torch.manual_seed(2)
    head = DINOHead(6, 16, hidden_dim=8, bottleneck_dim=4)
    x = torch.randn(3, 6)
    reference = nn.utils.parametrizations.weight_norm(nn.Linear(4, 16, bias=False))
    with torch.no_grad():
        reference.parametrizations.weight.original1.copy_(head.prototypes)
        reference.parametrizations.weight.original0.fill_(1.0)
    torch.testing.assert_close(head(x), reference(F.normalize(head.mlp(x), dim=-1)))


def test_center_is_the_ema_of_the_teacher_batch_mean():
    _, objective = dino(center_momentum=0.9)
    teacher = torch.randn(10, 16)
    objective.centering.center.fill_(1.0)
    objective.centering.update(teacher)
    torch.testing.assert_close(objective.centering.center,
                               0.9 * torch.ones(1, 16) + 0.1 * teacher.mean(0, keepdim=True))


def test_teacher_temperature_warms_up_linearly_then_holds():
    assert teacher_temperature(0, 30, 0.04, 0.07) == pytest.approx(0.04)
    assert teacher_temperature(15, 30, 0.04, 0.07) == pytest.approx(0.055)
    assert teacher_temperature(30, 30, 0.04, 0.07) == pytest.approx(0.07)
    assert teacher_temperature(99, 30, 0.04, 0.07) == pytest.approx(0.07)


@pytest.mark.parametrize("kwargs,warmup_steps", [({"warmup_teacher_temp_epochs": 3}, 30),
                                                 ({"warmup_teacher_temp_fraction": 0.3}, 60)])
def test_teacher_temperature_warm_up_in_epochs_or_as_a_fraction_of_the_run(kwargs, warmup_steps):
    """10 steps per epoch, 200 steps: 3 epochs are 30 steps; 0.3 of the run is 60."""
    backbone, objective = dino(**kwargs)
    objective.bind_schedule(10, 200)
    for step in (0, warmup_steps // 2, warmup_steps, 150):
        objective.after_optimizer_step(backbone, step, 200)
        expected = teacher_temperature(step, warmup_steps, 0.04, 0.07)
        assert float(objective.teacher_temp) == pytest.approx(expected)
    assert teacher_temperature(warmup_steps // 2, warmup_steps, 0.04, 0.07) == pytest.approx(0.055)


def test_the_last_layer_is_frozen_for_its_epochs_only():
    _, objective = dino(freeze_last_layer_epochs=1.5)
    objective.bind_schedule(10, 100)
    assert objective.frozen_parameters(0) == [objective.head.prototypes]
    assert objective.frozen_parameters(14) == [objective.head.prototypes]
    assert objective.frozen_parameters(15) == []
    _, never = dino(freeze_last_layer_epochs=0)
    never.bind_schedule(10, 100)
    assert never.frozen_parameters(0) == []


def test_the_teacher_is_evaluated_by_default_and_drops_no_paths():
    from selfsup.backbones.vit import ViT

    vit = ViT("vit_tiny_patch16_224", img_size=28, patch_size=4, in_chans=1, depth=2, drop_path_rate=0.5)
    objective = DINO(vit, VIEWS, out_dim=16, hidden_dim=8, bottleneck_dim=4)
    assert objective.eval_model(vit) is objective.teacher["backbone"]
    assert {m.drop_prob for m in objective.teacher.modules() if hasattr(m, "drop_prob")} == {0.0}
    assert {m.drop_prob for m in vit.modules() if hasattr(m, "drop_prob")} - {0.0}  # the student keeps its own
    student = DINO(vit, VIEWS, out_dim=16, hidden_dim=8, bottleneck_dim=4, evaluate="student")
    assert student.eval_model(vit) is vit
    objective.train()
    batch = {"global1": torch.randn(3, 1, 28, 28), "global2": torch.randn(3, 1, 28, 28),
             "local1": torch.randn(3, 1, 12, 12), "local2": torch.randn(3, 1, 12, 12)}
    out = objective(vit, batch)
    with torch.no_grad():
        torch.testing.assert_close(out.features, objective.teacher["backbone"](batch["global1"]))


def test_no_gradient_reaches_the_teacher_and_it_follows_the_student():
    backbone, objective = dino()
    batch = {v["key"]: torch.randn(4, 12) for v in VIEWS}
    objective.train()
    center_before = objective.centering.center.clone()
    objective(backbone, batch).loss.backward()
    teacher = list(objective.teacher.parameters())
    assert teacher and all(p.grad is None and not p.requires_grad for p in teacher)
    assert all(p.grad is not None for p in [*backbone.parameters(), *objective.head.parameters()])
    assert not torch.equal(objective.centering.center, center_before)  # training steps move the centre
    with torch.no_grad():
        for p in [*backbone.parameters(), *objective.head.parameters()]:
            p.add_(1.0)
    before = [p.clone() for p in teacher]
    objective.bind_schedule(1, 100)
    objective.after_optimizer_step(backbone, 10, 100)
    m = cosine_momentum(10, 100, 0.996)
    student = [*backbone.parameters(), *objective.head.parameters()]
    for t0, s, t1 in zip(before, student, teacher):
        torch.testing.assert_close(t1, m * t0 + (1 - m) * s)
    assert float(objective.teacher_temp) == pytest.approx(teacher_temperature(10, 30, 0.04, 0.07))


def test_validation_does_not_move_the_centre():
    backbone, objective = dino()
    objective.eval()
    objective(backbone, {v["key"]: torch.randn(4, 12) for v in VIEWS})
    assert torch.equal(objective.centering.center, torch.zeros(1, 16))


@pytest.mark.parametrize("kwargs,message", [({"student_temp": 0}, "objective.student_temp must be positive"),
                                            ({"center_momentum": 1.0}, "objective.center_momentum"),
                                            ({"centering": "mean"}, "objective.centering must be one of"),
                                            ({"evaluate": "both"}, "objective.evaluate must be teacher"),
                                            ({"base_momentum": 1.5}, "objective.base_momentum must be in")])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        dino(**kwargs)
    with pytest.raises(ConfigError, match="at least two views"):
        DINO(FlatBackbone(), [{"key": "global1"}])


def test_multi_crop_views_of_two_sizes_each_go_through_the_backbone_once_per_size():
    """2 global crops of 28 px and 2 local crops of 12 px on a ViT: the student's outputs in view order equal
    per-view passes, and the loss is DINO's over the 2 x 3 pairs."""
    from selfsup.backbones.vit import ViT

    torch.manual_seed(3)
    vit = ViT("vit_tiny_patch16_224", img_size=28, patch_size=4, in_chans=1, depth=1)
    objective = DINO(vit, VIEWS, out_dim=16, hidden_dim=8, bottleneck_dim=4).eval()
    batch = {"global1": torch.randn(3, 1, 28, 28), "global2": torch.randn(3, 1, 28, 28),
             "local1": torch.randn(3, 1, 12, 12), "local2": torch.randn(3, 1, 12, 12)}
    out = objective(vit, batch)
    with torch.no_grad():
        student = [objective.head(vit(batch[v["key"]])) for v in VIEWS]
        teacher = [objective.teacher["head"](objective.teacher["backbone"](batch[k])) for k in ("global1", "global2")]
    targets = [F.softmax((t - objective.centering.center) / objective.teacher_temp, dim=-1) for t in teacher]
    expected = dino_loss(student, targets, 0.1)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-5)
    assert out.features.shape == (3, vit.embed_dim)


def test_a_view_with_copies_stands_for_that_many_views():
    views = [{"key": "global1"}, {"key": "global2"}, {"key": "local", "copies": 3, "size": 12}]
    objective = DINO(FlatBackbone(), views, out_dim=16, hidden_dim=8, bottleneck_dim=4)
    assert [v["key"] for v in objective.views] == ["global1", "global2", "local1", "local2", "local3"]
    assert all(v["size"] == 12 and "copies" not in v for v in objective.views[2:])
    with pytest.raises(ConfigError, match="objective.views local copies must be a whole number of at least 1"):
        DINO(FlatBackbone(), [*views[:2], {"key": "local", "copies": 0}])
