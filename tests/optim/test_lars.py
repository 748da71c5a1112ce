"""LARS: the update formula, and excluded biases and norms."""
from __future__ import annotations

import torch
from torch import nn

from selfsup.backbones.resnet import ResNet
from selfsup.optim import build_optimizer, param_groups
from selfsup.optim.lars import LARS


def test_lars_step_matches_the_formula_and_skips_excluded_parameters():
    torch.manual_seed(0)
    w, bias = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4))
    w.grad, bias.grad = torch.randn(4, 3), torch.randn(4)
    w0, b0, gw, gb = w.detach().clone(), bias.detach().clone(), w.grad.clone(), bias.grad.clone()
    opt = LARS([{"params": [w], "weight_decay": 0.1}, {"params": [bias], "weight_decay": 0.0, "lars_exclude": True}],
               lr=0.5, momentum=0.9, trust_coefficient=0.001)
    opt.step()
    g = gw + 0.1 * w0
    trust = 0.001 * w0.norm() / g.norm()
    torch.testing.assert_close(w.detach(), w0 - 0.5 * trust * g)
    torch.testing.assert_close(bias.detach(), b0 - 0.5 * gb)  # plain SGD: no trust ratio, no decay
    opt.step()  # momentum: v = 0.9 v + g'
    g2 = gw + 0.1 * w.detach()
    v = 0.9 * trust * g + 0.001 * w.detach().norm() / g2.norm() * g2
    torch.testing.assert_close(w.detach(), w0 - 0.5 * trust * g - 0.5 * v)


def test_lars_is_selectable_and_excludes_biases_and_norms():
    backbone = ResNet("resnet18", img_size=32)
    groups = param_groups({"backbone": backbone}, 1e-6)
    opt = build_optimizer("lars", groups, lr=0.3)
    assert isinstance(opt, LARS)
    excluded = [g for g in opt.param_groups if g["lars_exclude"]]
    assert len(excluded) == 1 and all(p.ndim == 1 for p in excluded[0]["params"]) and excluded[0]["weight_decay"] == 0
