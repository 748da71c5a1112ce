"""Samples per second and peak GPU memory, measured between logging steps without any device sync."""
from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch


class Throughput(pl.Callback):
    """Logs `train/samples_per_s` (global, all processes) and `train/peak_mem_gib` every `every_n_steps`, and
    `train/wall_s`, the training wall time so far over all starts of the run (kept in checkpoints), which
    compare.py plots metrics against.

    Wall time between optimizer steps over a window: in steady state the GPU queue makes this the GPU's
    rate, and no synchronisation is added to the step.
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = every_n_steps
        self.global_batch = 0
        self._t0: float | None = None
        self._step0 = 0
        self.elapsed = 0.0  # wall seconds of training before this start (restored from the checkpoint)
        self._start: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        per_device = trainer.datamodule.batch_size if trainer.datamodule is not None else 0
        self.global_batch = per_device * trainer.world_size * trainer.accumulate_grad_batches
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self._t0 is None:
            self._t0 = time.perf_counter()
            self._step0 = step
            return
        if step - self._step0 >= self.every_n_steps:
            now = time.perf_counter()
            rate = (step - self._step0) * self.global_batch / (now - self._t0)
            pl_module.log("train/samples_per_s", rate, prog_bar=True, rank_zero_only=True)
            pl_module.log("train/wall_s", self.wall_s(), rank_zero_only=True)
            if torch.cuda.is_available():
                pl_module.log("train/peak_mem_gib", torch.cuda.max_memory_allocated() / 2**30, rank_zero_only=True)
            self._t0 = now
            self._step0 = step

    def wall_s(self) -> float:
        return self.elapsed + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self.wall_s()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.elapsed = float(state.get("elapsed", 0.0))
