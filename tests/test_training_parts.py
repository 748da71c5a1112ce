"""Optimizer groups, the schedule, learning-rate scaling, precision, fused attention, image folders."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from selfsup.backbones.vit import ViT, auto_patch_size
from selfsup.data.image_folder import ImageFolder
from selfsup.errors import ConfigError
from selfsup.module import OptimConfig, PretrainModule
from selfsup.objectives.mae import MAE
from selfsup.optim import param_groups, scaled_lr, warmup_cosine
from selfsup.train import place_augmentation, resolve_precision, resolve_sync_batchnorm


def tiny():
    vit = ViT("vit_tiny_patch16_224", img_size=28, in_chans=1, depth=2, pos_embed="learned")
    return vit, MAE(vit, decoder_dim=32, decoder_depth=1, decoder_heads=2)


def test_no_weight_decay_on_biases_norms_positions_and_tokens():
    vit, mae = tiny()
    decay, no_decay = param_groups({"backbone": vit, "objective": mae}, 0.05)
    names = {id(p): n for m in (vit, mae) for n, p in m.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {"vit.pos_embed", "vit.cls_token", "decoder.mask_token", "vit.norm.weight", "vit.blocks.0.attn.qkv.bias"} <= skipped
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
    o = OptimConfig.from_cfg(cfg, global_batch=512, steps_per_epoch=100, total_steps=1000)
    assert o.lr == pytest.approx(2e-3) and o.warmup_steps == 200
    o = OptimConfig.from_cfg({**cfg, "lr": 0.01}, global_batch=512, steps_per_epoch=100, total_steps=1000)
    assert o.lr == 0.01


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


def test_precision_auto_is_fp32_on_cpu_and_overridable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto") == "bf16-mixed"
    assert resolve_precision("16-mixed") == "16-mixed"
    assert resolve_precision("auto", accelerator="cpu") == "32-true"  # trainer=cpu on a GPU machine


def test_gpu_defaults_follow_the_accelerator_not_the_machine(monkeypatch):
    """On a GPU machine, trainer=cpu trains on the CPU: no SyncBatchNorm, and views made in the data workers."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_sync_batchnorm("auto", "auto") and not resolve_sync_batchnorm("auto", "cpu")
    for accelerator, where in (("cpu", "cpu"), ("auto", "auto"), ("gpu", "auto")):
        data = OmegaConf.create({"augment_on": "auto"})
        place_augmentation(data, accelerator)
        assert data.augment_on == where, accelerator
    data = OmegaConf.create({"augment_on": "gpu"})
    place_augmentation(data, "cpu")
    assert data.augment_on == "gpu"  # an explicit choice stands


def test_attention_is_fused():
    vit, mae = tiny()
    assert all(block.attn.fused_attn for block in vit.vit.blocks)
    assert all(block.attn.fused_attn for block in mae.decoder.blocks)


@pytest.mark.parametrize("size,patch", [(224, 16), (96, 8), (64, 8), (32, 4), (28, 4)])
def test_auto_patch_size(size, patch):
    assert auto_patch_size(size) == patch


def test_unknown_timm_model_and_non_vit_are_refused():
    with pytest.raises(ConfigError, match="unknown timm model"):
        ViT("vit_does_not_exist", img_size=32)
    with pytest.raises(ConfigError, match="not a VisionTransformer"):
        ViT("resnet18", img_size=32)


def test_image_folder_reads_class_folders(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cats", "dogs"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 30), (i * 40, 10, 200)).save(tmp_path / split / cls / f"{i}.png")
    dm = ImageFolder(root=str(tmp_path), image_size=32, batch_size=2, num_workers=0,
                     views=[{"key": "image", "crop_scale": [0.5, 1.0], "hflip": 0.5}])
    dm.setup()
    assert len(dm.train_set) == 6 and len(dm.val_set) == 4
    sample = dm.train_set[(0, 4)]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.uint8 and sample["label"] == 1
    assert math.isclose(float(dm.val_set[(0, 0)]["image"].float().mean()), (0 + 10 + 200) / 3, abs_tol=2)
