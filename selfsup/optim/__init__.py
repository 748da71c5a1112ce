"""Optimizers and learning-rate schedules, built from the `optim/` config group."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from selfsup.errors import ConfigError
from selfsup.optim.lars import LARS

NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "dist_token", "mask_token")


def param_groups(modules: dict[str, nn.Module], weight_decay: float, lr: float | None = None,
                 no_decay_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Two groups: decayed weights, and biases, norms, position embeddings and special tokens (no decay,
    no LARS adaptation, and, when `lr` is given, the learning rate lr x no_decay_lr_scale: Barlow Twins trains
    its biases and norms at 0.0048 / 0.2 of the weights' rate)."""
    decay, no_decay = [], []
    for prefix, module in modules.items():
        explicit = set(module.no_weight_decay()) if hasattr(module, "no_weight_decay") else set()
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            skip = p.ndim <= 1 or name in explicit or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES
            (no_decay if skip else decay).append(p)
    exempt = {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}
    if lr is not None:
        exempt["lr"] = lr * no_decay_lr_scale
    return [{"params": decay, "weight_decay": weight_decay, "decayed": True}, exempt]


LR_SCALINGS = ("linear", "sqrt")


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int = 256, rule: str = "linear") -> float:
    """The linear scaling rule (Goyal et al. 2017) used by MAE, SimCLR, BYOL and DINO: lr = base_lr * B / 256;
    or the square-root rule DINOv2 uses: lr = base_lr * sqrt(B / 1024) (with reference_batch 1024)."""
    if rule not in LR_SCALINGS:
        raise ConfigError(f"optim.lr_scaling must be linear or sqrt, got '{rule}'")
    if reference_batch < 1:
        raise ConfigError(f"optim.reference_batch must be a positive batch size, got {reference_batch}")
    ratio = global_batch / reference_batch
    return base_lr * (ratio if rule == "linear" else math.sqrt(ratio))


OPTIMIZERS = ("adamw", "lars", "sgd")


def check_optimizer_name(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer '{name}' in optim.name; choose {', '.join(OPTIMIZERS[:-1])} or "
                          f"{OPTIMIZERS[-1]}")


def build_optimizer(name: str, groups: list[dict[str, Any]], lr: float, betas: Iterable[float] = (0.9, 0.999),
                    momentum: float = 0.9, trust_coefficient: float = 0.001,
                    fused: bool = False) -> torch.optim.Optimizer:
    check_optimizer_name(name)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, trust_coefficient=trust_coefficient)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused or None)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def cosine_ramp(step: int, total_steps: int, start: float, end: float) -> float:
    """end - (end - start) (cos(pi k / K) + 1) / 2: `start` at step 0, `end` from the last step on (DINO's
    weight-decay and teacher-momentum schedules)."""
    progress = min(max(step / max(1, total_steps), 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
    """A LambdaLR factor: linear warm-up from 0 to 1, then half a cosine down to `min_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@dataclass
class OptimConfig:
    """The resolved optimisation recipe. `lr` is the final learning rate (already scaled by batch size)."""

    name: str
    lr: float
    weight_decay: float
    warmup_steps: int
    total_steps: int
    min_lr_ratio: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    trust_coefficient: float = 0.001
    weight_decay_end: float | None = None  # weight decay on a cosine from weight_decay to this (DINO: 0.04 -> 0.4)
    clip_grad_norm: float | None = None  # clip the gradients' global norm to this (unless trainer.gradient_clip_val)
    no_decay_lr_scale: float = 1.0  # the lr of biases and norms relative to the weights' (Barlow Twins: 0.024)

    def weight_decay_at(self, step: int) -> float:
        if self.weight_decay_end is None:
            return self.weight_decay
        return cosine_ramp(step, self.total_steps, self.weight_decay, self.weight_decay_end)

    @classmethod
    def from_recipe(cls, *, global_batch: int, steps_per_epoch: int, total_steps: int, name: str = "adamw",
                    base_lr: float | None = None, lr: float | None = None, weight_decay: float = 0.0,
                    betas: Iterable[float] = (0.9, 0.999), momentum: float = 0.9, trust_coefficient: float = 0.001,
                    warmup_epochs: float | None = None, warmup_fraction: float = 0.0,
                    min_lr: float = 0.0, weight_decay_end: float | None = None,
                    clip_grad_norm: float | None = None, lr_scaling: str = "linear",
                    reference_batch: int = 256, no_decay_lr_scale: float = 1.0) -> "OptimConfig":
        """The recipe of an `optim/` config (built with `_partial_: true`), resolved for the run's global batch
        and length: lr = base_lr scaled from `reference_batch` to global_batch by `lr_scaling` (see scaled_lr)
        unless `lr` is given; warm-up in epochs or as a fraction."""
        check_optimizer_name(name)
        if not no_decay_lr_scale > 0:
            raise ConfigError(f"optim.no_decay_lr_scale must be positive, got {no_decay_lr_scale}")
        if lr is None and base_lr is None:
            raise ConfigError("set optim.base_lr (scaled by the global batch) or optim.lr (used as is)")
        lr = lr or scaled_lr(base_lr, global_batch, reference_batch, lr_scaling)
        if warmup_epochs is not None:
            warmup = round(warmup_epochs * steps_per_epoch)
        else:
            warmup = round(warmup_fraction * total_steps)
        return cls(name=name, lr=lr, weight_decay=weight_decay, warmup_steps=min(warmup, total_steps),
                   total_steps=total_steps, min_lr_ratio=min_lr / lr, betas=tuple(betas), momentum=momentum,
                   trust_coefficient=trust_coefficient, weight_decay_end=weight_decay_end,
                   clip_grad_norm=clip_grad_norm, no_decay_lr_scale=no_decay_lr_scale)
