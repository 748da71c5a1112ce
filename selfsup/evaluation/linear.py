"""Linear probes: a BatchNorm without affine parameters, then a linear layer (as MAE's linear probing).

The BatchNorm standardises features whose scale differs between backbones and objectives (LayerNorm-ed ViT
tokens, post-ReLU ResNet features), so one learning rate suits them all; without affine parameters the probe
stays linear. Used by the online probe during pretraining and by eval.py's `linear` protocol, which trains it
on features computed once.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError
from selfsup.evaluation.features import FeatureSet
from selfsup.evaluation.knn import topk_accuracy
from selfsup.evaluation.protocol import EvalContext, Protocol
from selfsup.optim import warmup_cosine

OPTIMIZERS = ("sgd", "adamw")


class LinearProbe(nn.Module):
    """BatchNorm1d(affine=False) + Linear, zero-initialised (softmax regression is convex; no RNG drawn)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.linear = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x.float()))


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW: the probes' two choices."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown probe optimizer '{name}'; choose one of {OPTIMIZERS}")


@torch.no_grad()
def evaluate_probe(probe: nn.Module, data: FeatureSet, batch_size: int = 4096,
                   prefix: str = "val/") -> dict[str, float]:
    """`{prefix}linear_top1`, `{prefix}linear_top5` and `{prefix}linear_loss` of a probe on features."""
    was_training = probe.training
    probe.eval()
    logits = torch.cat([probe(x) for x in data.features.split(batch_size)])
    probe.train(was_training)
    acc = topk_accuracy(logits, data.labels)
    loss = F.cross_entropy(logits, data.labels).item()
    return {f"{prefix}linear_top1": acc[1], f"{prefix}linear_top5": acc[5], f"{prefix}linear_loss": loss}


def train_linear_probe(train: FeatureSet, val: FeatureSet | None, num_classes: int, epochs: int = 100,
                       batch_size: int = 256, optimizer: str = "sgd", lr: float = 0.1, weight_decay: float = 0.0,
                       momentum: float = 0.9, warmup_epochs: int = 0, seed: int = 0,
                       log: Any = None) -> tuple[LinearProbe, dict[str, float]]:
    """Train a probe on cached features (shuffled mini-batches, cosine schedule); returns it and its final metrics.

    `lr` is the absolute learning rate. `log(metrics, epoch)` is called after each epoch when given.
    """
    train, device = train.labelled(), train.features.device
    probe = LinearProbe(train.features.shape[1], num_classes).to(device)
    opt = make_optimizer(optimizer, probe.parameters(), lr, weight_decay, momentum)
    steps_per_epoch = max(1, math.ceil(len(train) / batch_size))
    factor = warmup_cosine(warmup_epochs * steps_per_epoch, epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(seed)
    step = 0
    metrics: dict[str, float] = {}
    for epoch in range(epochs):
        order = torch.randperm(len(train), generator=g).to(device)
        running = torch.zeros((), device=device)
        for rows in order.split(batch_size):
            if len(rows) < 2:  # BatchNorm needs two samples to train
                continue
            for group in opt.param_groups:
                group["lr"] = lr * factor(step)
            loss = F.cross_entropy(probe(train.features[rows]), train.labels[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.detach() * len(rows)
            step += 1
        metrics = {"train/linear_loss": running.item() / len(train), "epoch": epoch}
        if val is not None:
            metrics.update(evaluate_probe(probe, val.labelled()))
        if log is not None:
            log(metrics, epoch)
    metrics.update(evaluate_probe(probe, train, prefix="train/"))
    return probe, metrics


class LinearProtocol(Protocol):
    """eval.py protocol=linear: a linear probe on frozen features, computed once with eval views and cached.

    `lr` is absolute when given, else base_lr x batch_size / 256 (the linear scaling rule).
    """

    name = "linear"

    def __init__(self, epochs: int = 100, batch_size: int = 256, optimizer: str = "sgd", base_lr: float = 0.1,
                 lr: float | None = None, weight_decay: float = 0.0, momentum: float = 0.9,
                 warmup_epochs: int = 0) -> None:
        if epochs < 1 or batch_size < 2:
            raise ConfigError(f"protocol.epochs must be >= 1 and protocol.batch_size >= 2, got {epochs}, {batch_size}")
        make_optimizer(optimizer, [torch.zeros(1, requires_grad=True)], 0.1)  # a bad name fails before any work
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.lr = lr if lr is not None else base_lr * batch_size / 256
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.warmup_epochs = warmup_epochs

    def run(self, backbone: nn.Module, ctx: EvalContext) -> dict[str, float]:
        train, val = ctx.features(backbone, "train"), ctx.features(backbone, "val")
        probe, metrics = train_linear_probe(train, val, ctx.num_classes, self.epochs, self.batch_size,
                                            self.optimizer, self.lr, self.weight_decay, self.momentum,
                                            self.warmup_epochs, ctx.seed, log=ctx.log)
        metrics.pop("epoch", None)
        trainable = sum(p.numel() for p in probe.parameters() if p.requires_grad)  # the adaptation table's column
        return {**metrics, "train_samples": len(train), "val_samples": len(val), "trainable_params": trainable}
