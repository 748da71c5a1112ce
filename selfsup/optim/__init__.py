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


def param_groups(modules: dict[str, nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: decayed weights, and biases, norms, position embeddings and special tokens (no decay,
    and no LARS adaptation)."""
    decay, no_decay = [], []
    for prefix, module in modules.items():
        explicit = set(module.no_weight_decay()) if hasattr(module, "no_weight_decay") else set()
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            skip = p.ndim <= 1 or name in explicit or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES
            (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int = 256) -> float:
    """The linear scaling rule (Goyal et al. 2017) used by MAE, SimCLR and BYOL: lr = base_lr * B / 256."""
    return base_lr * global_batch / reference_batch


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

    @classmethod
    def from_recipe(cls, *, global_batch: int, steps_per_epoch: int, total_steps: int, name: str = "adamw",
                    base_lr: float | None = None, lr: float | None = None, weight_decay: float = 0.0,
                    betas: Iterable[float] = (0.9, 0.999), momentum: float = 0.9, trust_coefficient: float = 0.001,
                    warmup_epochs: float | None = None, warmup_fraction: float = 0.0,
                    min_lr: float = 0.0) -> "OptimConfig":
        """The recipe of an `optim/` config (built with `_partial_: true`), resolved for the run's global batch
        and length: lr = base_lr x global_batch / 256 unless `lr` is given; warm-up in epochs or as a fraction."""
        check_optimizer_name(name)
        if lr is None and base_lr is None:
            raise ConfigError("set optim.base_lr (scaled by the global batch) or optim.lr (used as is)")
        lr = lr or scaled_lr(base_lr, global_batch)
        if warmup_epochs is not None:
            warmup = round(warmup_epochs * steps_per_epoch)
        else:
            warmup = round(warmup_fraction * total_steps)
        return cls(name=name, lr=lr, weight_decay=weight_decay, warmup_steps=min(warmup, total_steps),
                   total_steps=total_steps, min_lr_ratio=min_lr / lr, betas=tuple(betas), momentum=momentum,
                   trust_coefficient=trust_coefficient)
