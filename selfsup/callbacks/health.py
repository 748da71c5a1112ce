"""Representation health: collapse seen while it happens, on the features the online monitors compute anyway.

Logged at the end of every `every_n_epochs`-th epoch (and of training), beside kNN and the probe:

- `val/rankme` (Garrido et al. 2023): exp of the entropy of the normalised singular values of the validation
  features (N, D); between 1 (every sample on one direction) and min(N, D) (all directions used alike), so
  compare runs at the same N (`monitors.max_val_samples`: 256 on a CPU, 10,000 on a GPU by default).
- `val/feature_std`: the mean over dimensions of the standard deviation of the L2-normalised features; 0 for a
  complete collapse, about 1 / sqrt(D) for features spread evenly over the sphere.
- `train/alignment` and `train/uniformity` (Wang & Isola 2020), for objectives with two views of each sample
  (StepOutput.second_features): the mean squared distance between a sample's two L2-normalised features (0 is
  perfectly invariant), and log E exp(-2 ||f(x) - f(y)||^2) over pairs of samples of a batch, averaged over the
  two views (lower is more uniform; 0 is a collapse to one point). Averaged over the epoch's training batches, on
  the device: no host sync in the step. Uniformity is over each process's batch, so compare it at one batch size.

Teacher-student objectives log their teacher's entropy and KL to uniform as their own metrics (objectives/dino.py).
"""
from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from selfsup.callbacks.online_monitors import EvalFeatures, due, log_row
from selfsup.errors import ConfigError


def rankme(features: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """exp(-sum p_k log p_k) with p_k = sigma_k / ||sigma||_1 + eps over the singular values sigma of (N, D)."""
    sigma = torch.linalg.svdvals(features.float())
    p = sigma / sigma.sum().clamp_min(1e-12) + eps
    return torch.exp(-(p * torch.log(p)).sum())


def normalised_feature_std(features: torch.Tensor) -> torch.Tensor:
    """The mean over dimensions of the (unbiased) standard deviation of the L2-normalised features."""
    return F.normalize(features.float(), dim=1).std(dim=0).mean()


def alignment(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """E ||f(x) - f(y)||^2 over the pairs (a[i], b[i]) of L2-normalised features."""
    return (F.normalize(a.float(), dim=1) - F.normalize(b.float(), dim=1)).pow(2).sum(1).mean()


def uniformity(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log E exp(-t ||f(x_i) - f(x_j)||^2) over the pairs i < j of L2-normalised features."""
    return torch.pdist(F.normalize(x.float(), dim=1)).pow(2).mul(-t).exp().mean().log()


class HealthMonitor(pl.Callback):
    """RankMe and the normalised feature spread of the validation features; alignment and uniformity of the
    training batches' two views."""

    def __init__(self, features: EvalFeatures | None = None, every_n_epochs: int = 1) -> None:
        if every_n_epochs < 0:
            raise ConfigError(f"monitors.health.every_n_epochs must be >= 0, got {every_n_epochs}")
        self.features = features or EvalFeatures()
        self.every_n_epochs = every_n_epochs
        self._sums: torch.Tensor | None = None  # alignment, uniformity, batches: this epoch's, on the device
        self._epoch = -1
        self._world = 1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._world = trainer.world_size

    def state_dict(self) -> dict[str, Any]:
        """The unfinished epoch's sums, so that a run resumed mid-epoch logs what the whole run would. Only for one
        process: a checkpoint keeps rank 0's callback state, and rank 0's sums are not the others'; a resumed
        multi-process run averages the rest of its epoch instead."""
        sums = self._sums.tolist() if self._sums is not None and self._world == 1 else None
        return {"sums": sums, "epoch": self._epoch if sums is not None else -1}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums = torch.tensor(state["sums"]) if state.get("sums") is not None else None
        self._epoch = state.get("epoch", -1)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch != trainer.current_epoch:  # a resumed run keeps the sums of its unfinished epoch
            self._sums, self._epoch = None, trainer.current_epoch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not isinstance(outputs, dict) or outputs.get("second_features") is None:
            return
        a, b = outputs["features"], outputs["second_features"]
        if len(a) < 2:
            return
        one = torch.ones((), device=a.device)
        batch_terms = torch.stack([alignment(a, b), (uniformity(a) + uniformity(b)) / 2, one])
        self._sums = batch_terms if self._sums is None else self._sums.to(a.device) + batch_terms

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not due(trainer, self.every_n_epochs):
            return
        metrics: dict[str, float] = {}
        val = self.features.get(trainer, pl_module, "val")
        if val is not None and len(val) > 1:
            metrics["val/rankme"] = float(rankme(val.features))
            metrics["val/feature_std"] = float(normalised_feature_std(val.features))
        if self._sums is not None:
            sums = trainer.strategy.reduce(self._sums.to(pl_module.device), reduce_op="mean")
            count = float(sums[2])
            if count > 0 and math.isfinite(count):
                metrics["train/alignment"] = float(sums[0]) / count
                metrics["train/uniformity"] = float(sums[1]) / count
        if metrics:
            log_row(trainer, metrics)
