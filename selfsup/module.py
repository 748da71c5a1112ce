"""The one LightningModule: a backbone, an objective, and their optimizer and schedule."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from selfsup.objectives.base import Objective
from selfsup.optim import build_optimizer, param_groups, scaled_lr, warmup_cosine


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

    @classmethod
    def from_cfg(cls, cfg: dict[str, Any], global_batch: int, steps_per_epoch: int, total_steps: int) -> "OptimConfig":
        lr = cfg.get("lr") or scaled_lr(cfg["base_lr"], global_batch)
        if cfg.get("warmup_epochs") is not None:
            warmup = round(cfg["warmup_epochs"] * steps_per_epoch)
        else:
            warmup = round(cfg.get("warmup_fraction", 0.0) * total_steps)
        min_lr = cfg.get("min_lr", 0.0)
        return cls(name=cfg.get("name", "adamw"), lr=lr, weight_decay=cfg.get("weight_decay", 0.0),
                   warmup_steps=min(warmup, total_steps), total_steps=total_steps, min_lr_ratio=min_lr / lr,
                   betas=tuple(cfg.get("betas", (0.9, 0.999))), momentum=cfg.get("momentum", 0.9))


def batch_size_of(batch: dict[str, Any]) -> int:
    return len(batch["key"]) if "key" in batch else len(next(iter(batch.values())))


class PretrainModule(pl.LightningModule):
    def __init__(self, backbone: nn.Module, objective: Objective, optim: OptimConfig, compile: bool = False) -> None:
        super().__init__()
        self.backbone, self.objective, self.optim = backbone, objective, optim
        if compile:  # in place, so parameter names (and checkpoints) are the same with and without it
            self.objective.compile()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.objective(self.backbone, batch)
        n = batch_size_of(batch)
        self.log("train/loss", out.loss, prog_bar=True, batch_size=n, sync_dist=True)  # the global batch's loss
        for name, value in out.metrics.items():
            self.log(f"train/{name}", value, batch_size=n)
        return out.loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.objective(self.backbone, batch)
        n = batch_size_of(batch)
        self.log("val/loss", out.loss, prog_bar=True, sync_dist=True, batch_size=n)
        for name, value in out.metrics.items():
            self.log(f"val/{name}", value, sync_dist=True, batch_size=n)

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim
        groups = param_groups({"backbone": self.backbone, "objective": self.objective}, o.weight_decay)
        on_cuda = all(p.is_cuda for g in groups for p in g["params"])
        optimizer = build_optimizer(o.name, groups, o.lr, o.betas, o.momentum, fused=on_cuda)
        factor = warmup_cosine(o.warmup_steps, o.total_steps, o.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
