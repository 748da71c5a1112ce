"""PretrainModule: the optimizer and its per-step schedule."""
from __future__ import annotations

import pytest
from helpers import tiny_vit_and_mae as tiny

from selfsup.module import PretrainModule
from selfsup.optim import OptimConfig


def test_optimizer_steps_the_schedule():
    vit, mae = tiny()
    module = PretrainModule(vit, mae, OptimConfig("adamw", lr=1e-3, weight_decay=0.05, warmup_steps=4, total_steps=20))
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 / 4)
    for _ in range(3):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)
