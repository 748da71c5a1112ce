"""Optimizer groups (no decay on biases, norms, positions, tokens), the schedule, learning-rate scaling."""
from __future__ import annotations

import pytest
from helpers import tiny_vit_and_mae as tiny

from selfsup.backbones.vit import ViT
from selfsup.errors import ConfigError
from selfsup.optim import OptimConfig, param_groups, scaled_lr, warmup_cosine


def test_no_weight_decay_on_biases_norms_positions_and_tokens():
    vit, mae = tiny()
    decay, no_decay = param_groups({"backbone": vit, "objective": mae}, 0.05)
    names = {id(p): n for m in (vit, mae) for n, p in m.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    expected = {"vit.pos_embed", "vit.cls_token", "decoder.mask_token", "vit.norm.weight", "vit.blocks.0.attn.qkv.bias"}
    assert expected <= skipped
    assert {"vit.blocks.0.attn.qkv.weight", "vit.patch_embed.proj.weight", "decoder.head.weight"} <= decayed
    assert all(p.ndim >= 2 for p in decay["params"])
    assert len(decayed) + len(skipped) == sum(1 for m in (vit, mae) for p in m.parameters() if p.requires_grad)


def test_frozen_sincos_positions_are_not_optimized():
    vit = ViT("vit_tiny_patch16_224", img_size=28, in_chans=1, depth=1)
    assert not vit.vit.pos_embed.requires_grad
    groups = param_groups({"backbone": vit}, 0.05)
    assert all(p is not vit.vit.pos_embed for g in groups for p in g["params"])


def test_warmup_then_cosine():
    f = warmup_cosine(warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 110))


def test_lr_scales_with_the_global_batch():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)  # MAE's ViT-B recipe
    cfg = {"name": "adamw", "base_lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 2}
    o = OptimConfig.from_recipe(**cfg, global_batch=512, steps_per_epoch=100, total_steps=1000)
    assert o.lr == pytest.approx(2e-3) and o.warmup_steps == 200
    o = OptimConfig.from_recipe(**{**cfg, "lr": 0.01}, global_batch=512, steps_per_epoch=100, total_steps=1000)
    assert o.lr == 0.01


def test_the_square_root_rule_and_a_bad_rule():
    assert scaled_lr(2e-4, 4096, 1024, "sqrt") == pytest.approx(4e-4)  # DINOv2: base 2e-4 at batch 1024
    o = OptimConfig.from_recipe(name="adamw", base_lr=2e-4, lr_scaling="sqrt", reference_batch=1024, global_batch=256,
                                steps_per_epoch=10, total_steps=100)
    assert o.lr == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="optim.lr_scaling must be linear or sqrt"):
        scaled_lr(1e-3, 256, rule="cubic")
