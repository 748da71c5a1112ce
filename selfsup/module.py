"""The one LightningModule: a backbone, an objective, and their optimizer and schedule."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from selfsup import keyed_random
from selfsup.errors import ConfigError, NonFiniteLoss
from selfsup.objectives.base import Objective
from selfsup.optim import OptimConfig, build_optimizer, param_groups, warmup_cosine


def non_finite_terms(terms: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, value in terms.items() if not bool(torch.isfinite(value.detach()).all())]


def batch_size_of(batch: dict[str, Any]) -> int:
    return len(batch["key"]) if "key" in batch else len(next(iter(batch.values())))


NONFINITE_POLICIES = ("stop", "skip")


class PretrainModule(pl.LightningModule):
    """Backbone + objective + optimizer. Non-finite losses follow `nonfinite`:

    - `stop` (default): the run ends with a NonFiniteLoss naming the step and the term. The check costs no
      device sync: each step's finiteness is copied to the host asynchronously and read two steps later (on
      GPUs), and before any checkpoint is written (which also checks the weights), so no NaN reaches a
      checkpoint. Under DDP the flags are all-reduced first, so every process stops at the same step instead
      of one leaving the others waiting in a collective.
    - `skip`: a step whose loss is not finite is dropped (no backward, no update) and counted in
      `train/skipped_steps`; more than `max_consecutive_skips` in a row stop the run. This checks on the host
      every step (one sync per step).
    """

    def __init__(self, backbone: nn.Module, objective: Objective, optim: OptimConfig, compile: bool = False,
                 nonfinite: str = "stop", max_consecutive_skips: int = 10, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        if nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"trainer.nonfinite must be one of {NONFINITE_POLICIES}, got '{nonfinite}'")
        self.backbone = backbone
        self.objective = objective
        self.optim = optim
        self.nonfinite = nonfinite
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped_steps = 0
        self._consecutive_skips = 0
        self._pending: list[tuple[int, list[str], torch.Tensor, Any]] = []
        self.register_buffer("skipped_samples", torch.zeros((), dtype=torch.long), persistent=False)
        if compile:  # in place, so parameter names (and checkpoints) are the same with and without it
            self.objective.compile()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Seed torch's generators from (seed, step, micro-batch, rank): what draws from them in the step
        (stochastic depth, dropout) is then a function of the step, so a resumed run repeats it exactly, however
        much else drew before. The samples' own randomness (views, masks) is keyed by sample (keyed_random.py)."""
        micro_batch = batch_idx % self.trainer.accumulate_grad_batches
        key = keyed_random.combine(keyed_random.combine(self.seed, self.trainer.global_step), micro_batch)
        torch.manual_seed(int(keyed_random.combine(key, self.trainer.global_rank)))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor] | None:
        out = self.objective(self.backbone, batch)
        terms = {"loss": out.loss, **out.metrics}
        if self.nonfinite == "skip":
            if not self._loss_is_finite(out.loss):
                return self._skip_step(terms)
            self._consecutive_skips = 0
            self.log("train/skipped_steps", float(self.skipped_steps))
        else:
            self._watch(terms)
        n = batch_size_of(batch)
        # the global batch's loss (callbacks/progress.py shows it)
        self.log("train/loss", out.loss, batch_size=n, sync_dist=True)
        for name, value in out.metrics.items():
            self.log(f"train/{name}", value, batch_size=n)
        for name, value in self.objective.step_metrics().items():
            self.log(f"train/{name}", value, batch_size=n)
        if "skipped" in batch:  # unreadable samples the data module replaced (data.on_error=skip)
            self.skipped_samples += batch["skipped"].sum()
            self.log("data/skipped_samples", self.skipped_samples.float(), reduce_fx="max")
        # detached features: callbacks (the online probe, the health monitor) see them in `outputs`
        shown = {"features": out.features, "second_features": out.second_features}
        return {"loss": out.loss, **{name: value for name, value in shown.items() if value is not None}}

    # -- non-finite losses ---------------------------------------------------------------------------------
    def _loss_is_finite(self, loss: torch.Tensor) -> bool:
        finite = bool(torch.isfinite(loss.detach()))
        return self.trainer.strategy.reduce_boolean_decision(finite, all=True) if self._trainer else finite

    def _skip_step(self, terms: dict[str, torch.Tensor]) -> None:
        self.skipped_steps += 1
        self._consecutive_skips += 1
        if self._consecutive_skips > self.max_consecutive_skips:
            raise NonFiniteLoss(f"{self._consecutive_skips} consecutive steps had a non-finite loss (last at step "
                                f"{self.global_step}, terms: {', '.join(non_finite_terms(terms))})")
        return None

    CHECK_LAG = 2  # GPU steps between a step and reading its flags: all processes read at the same step

    def _watch(self, terms: dict[str, torch.Tensor]) -> None:
        flags = torch.stack([torch.isfinite(t.detach()).all() for t in terms.values()])
        if self._trainer is not None and self.trainer.world_size > 1:  # the same verdict on every process
            flags = flags.int()
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
            flags = flags.bool()
        event = None
        if flags.is_cuda:
            host = torch.empty(flags.shape, dtype=torch.bool, pin_memory=True)
            host.copy_(flags, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            flags = host
        self._pending.append((self.global_step, list(terms), flags, event))
        self._check_pending(block=False)

    def _check_pending(self, block: bool) -> None:
        while self._pending:
            step, names, flags, event = self._pending[0]
            if event is not None:
                if not block and step > self.global_step - self.CHECK_LAG:
                    return
                event.synchronize()  # long done in practice: the host runs at most a step or two ahead
            self._pending.pop(0)
            if not bool(flags.all()):
                bad = [name for name, ok in zip(names, flags.tolist()) if not ok]
                raise NonFiniteLoss(f"non-finite {', '.join(bad)} at step {step}; the run stopped")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Never write NaN/Inf weights: settle pending loss checks and check the weights themselves."""
        self._check_pending(block=True)
        params = dict(self.named_parameters())
        finite = torch.stack([torch.isfinite(p).all() for p in params.values()])
        if not bool(finite.all()):  # one device sync for all weights
            bad = [name for name, ok in zip(params, finite.tolist()) if not ok]
            raise NonFiniteLoss(f"non-finite weights ({', '.join(bad[:3])}) at step {self.global_step}; "
                                "the run stopped without writing them")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.objective(self.backbone, batch)
        n = batch_size_of(batch)
        self.log("val/loss", out.loss, prog_bar=True, sync_dist=True, batch_size=n)
        for name, value in out.metrics.items():
            self.log(f"val/{name}", value, sync_dist=True, batch_size=n)
        self.objective.update_validation(out, n)

    def on_validation_epoch_start(self) -> None:
        self.objective.reset_validation()

    def on_validation_epoch_end(self) -> None:
        """The objective's metrics over the whole split (Objective.compute_validation), summed over processes."""
        reduce_sum = lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")  # noqa: E731
        for name, value in self.objective.compute_validation(reduce_sum).items():
            self.log(f"val/{name}", value, sync_dist=False)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, *args: Any, **kwargs: Any) -> None:
        """The step's weight decay (optim.weight_decay_end: a cosine, a function of the step and so resumed
        exactly), the step, then the objective's schedule-driven updates."""
        if self.optim.weight_decay_end is not None:
            decay = self.optim.weight_decay_at(self.trainer.global_step)
            for group in optimizer.param_groups:
                if group.get("decayed"):
                    group["weight_decay"] = decay
        super().optimizer_step(epoch, batch_idx, optimizer, *args, **kwargs)
        self.objective.after_optimizer_step(self.backbone, self.trainer.global_step, self.optim.total_steps)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Parameters the objective holds still at this step (Objective.frozen_parameters: DINO's last layer in
        its first epoch) lose their gradients, so the optimizer skips them, weight decay included."""
        for p in self.objective.frozen_parameters(self.trainer.global_step):
            p.grad = None

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """trainer.gradient_clip_val when set, else the recipe's optim.clip_grad_norm (DINO's 3.0)."""
        if gradient_clip_val is None and self.optim.clip_grad_norm:
            gradient_clip_val, gradient_clip_algorithm = self.optim.clip_grad_norm, "norm"
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_model(self) -> None:
        """channels_last on GPUs: convolutions (ResNets, patch embeddings) run faster in that layout. Done here,
        before DDP wraps the model, so that its gradient buckets are laid out like the gradients."""
        if self.trainer.strategy.root_device.type == "cuda":
            self.to(memory_format=torch.channels_last)

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim
        groups = param_groups({"backbone": self.backbone, "objective": self.objective}, o.weight_decay, o.lr,
                              o.no_decay_lr_scale)
        on_cuda = all(p.is_cuda for g in groups for p in g["params"])
        optimizer = build_optimizer(o.name, groups, o.lr, o.betas, o.momentum, o.trust_coefficient, fused=on_cuda)
        factor = warmup_cosine(o.warmup_steps, o.total_steps, o.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
