"""Preemption: on SIGUSR1 or SIGTERM, finish the step, save last.ckpt, requeue the SLURM job, and stop; a run
that was not requeued (outside SLURM) ends with status 128 + the signal's number (143 for SIGTERM).

Why not Lightning's own SLURM auto-requeue: its handler saves the checkpoint inside the signal handler,
which Python runs between any two bytecodes: mid-step, or between an optimizer's updates of two tensors.
Here the handler only raises a flag; the checkpoint is written at the next batch boundary, where the
weights, optimizer, schedule, step counters and data position agree, so the requeued job resumes exactly.
"""
from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from selfsup.callbacks.run_checkpoint import RunCheckpoint
from selfsup.errors import ConfigError, Stopped

SIGNALS = ("SIGUSR1", "SIGTERM")


class Preemption(pl.Callback):
    """Saves through the run's RunCheckpoint (found among the trainer's callbacks), so that it is also the one
    frozen afterwards."""

    def __init__(self, signals: tuple[str, ...] = SIGNALS, requeue: bool = True, check_every_n_steps: int = 1) -> None:
        self.requeue = requeue
        self.checkpoint: RunCheckpoint | None = None
        self.signals = [getattr(signal, name) for name in signals]
        self.check_every_n_steps = max(1, check_every_n_steps)
        self.received: int | None = None
        self.stopped: Stopped | None = None  # set when the run must end with a non-zero status (see pretrain)
        self._previous: dict[int, Any] = {}

    def _flag(self, signum: int, frame: Any) -> None:
        self.received = signum

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        found = [cb for cb in trainer.callbacks if isinstance(cb, RunCheckpoint)]
        if not found:
            raise ConfigError("callbacks.preemption needs callbacks.run_checkpoint, which writes the checkpoint it "
                              "saves on a signal; keep both, or set callbacks.preemption=null")
        self.checkpoint = found[0]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for signum in self.signals:
            try:
                self._previous[signum] = signal.signal(signum, self._flag)
            except ValueError:  # not the main thread: leave signals alone
                return

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.checkpoint.frozen:  # already preempted
            return
        stop = self.received is not None
        if trainer.world_size > 1:  # every rank must stop at the same step: agree every N steps
            if trainer.global_step % self.check_every_n_steps:
                return
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        name = signal.Signals(self.received).name if self.received else "a signal on another rank"
        path = self.checkpoint.last_path
        rank_zero_info(f"preemption: {name} received; saving {path} at step {trainer.global_step}")
        trainer.save_checkpoint(path)
        self.checkpoint.freeze()  # no later write may replace this one (see callbacks/run_checkpoint.py)
        requeued = False
        if self.requeue and os.environ.get("SLURM_JOB_ID"):  # the first process requeues the job for all
            requeued = requeue_slurm_job() if trainer.is_global_zero else True
        if not requeued:  # outside SLURM (or its requeue failed): the scheduler must see the job as unfinished
            signum = self.received or signal.SIGTERM
            self.stopped = Stopped(f"{name} at step {trainer.global_step}; saved {path}: continue with "
                                   "resume=auto", 128 + signum)
        trainer.should_stop = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def requeue_slurm_job() -> bool:
    """`scontrol requeue` this SLURM job (an array task's own id when in an array); False outside SLURM."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not job_id:
        return False
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode:
        rank_zero_warn(f"preemption: `scontrol requeue {job_id}` failed: {result.stderr.strip()}")
        return False
    rank_zero_info(f"preemption: requeued SLURM job {job_id}")
    return True
