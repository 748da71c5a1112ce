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


def fit_dino(optim: OptimConfig, steps: int, steps_per_epoch: int = 10):
    """A few real Lightning steps of DINO on a one-layer backbone; returns the module and the weights before."""
    import pytorch_lightning as pl
    import torch
    from helpers import FlatBackbone
    from torch.utils.data import DataLoader

    from selfsup.objectives.dino import DINO

    torch.manual_seed(0)
    backbone = FlatBackbone()
    views = [{"key": "global1"}, {"key": "global2"}, {"key": "local1"}]
    objective = DINO(backbone, views, out_dim=16, hidden_dim=8, bottleneck_dim=4)
    objective.bind_schedule(steps_per_epoch, steps)
    module = PretrainModule(backbone, objective, optim)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    data = DataLoader([{v["key"]: torch.randn(12) for v in views} for _ in range(4 * steps)], batch_size=4)
    pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(module, data)
    return module, before


def test_weight_decay_follows_its_cosine_and_the_last_layer_is_held_in_the_first_epoch():
    optim = OptimConfig("adamw", lr=1e-2, weight_decay=0.04, warmup_steps=0, total_steps=3, weight_decay_end=0.4)
    module, before = fit_dino(optim, steps=3)
    decayed, plain = module.trainer.optimizers[0].param_groups
    assert decayed["weight_decay"] == pytest.approx(optim.weight_decay_at(2)) and plain["weight_decay"] == 0.0
    assert optim.weight_decay_at(0) == pytest.approx(0.04) and optim.weight_decay_at(3) == pytest.approx(0.4)
    params = dict(module.named_parameters())
    assert (params["objective.head.prototypes"] == before["objective.head.prototypes"]).all()
    assert not (params["objective.head.mlp.0.weight"] == before["objective.head.mlp.0.weight"]).all()


def test_gradients_are_clipped_to_the_recipes_global_norm():
    """SGD's first step is lr x gradient: with clipping to c it moves the trainable weights by exactly lr x c."""
    import torch

    optim = OptimConfig("sgd", lr=0.1, weight_decay=0.0, warmup_steps=0, total_steps=1, clip_grad_norm=1e-3)
    module, before = fit_dino(optim, steps=1, steps_per_epoch=0)
    moved = torch.cat([(p.detach() - before[n]).flatten() for n, p in module.named_parameters() if p.requires_grad])
    assert float(moved.norm()) == pytest.approx(0.1 * 1e-3, rel=1e-3)
