"""The run's checkpoints: Lightning's ModelCheckpoint, plus last.ckpt at the final step whatever the period,
and frozen once the run is preempted.

When training stops mid-epoch (max_steps, a preemption), Lightning then closes the unfinished epoch; a
checkpoint written after that records the epoch as complete while the data stream stands mid-epoch, so a run
extended from it (resume=auto trainer.max_steps=MORE) would skip the rest of the epoch's data and number the
epochs differently from the same run killed and resumed. So last.ckpt is written at the final step itself,
as a periodic checkpoint is, and the preemption checkpoint is frozen.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    """`step_XXXXXXX.ckpt` every `every_n_steps` optimizer steps (0: every `every_n_epochs` epochs instead), all
    kept, and `last.ckpt`, in `dirpath`."""

    frozen = False

    def __init__(self, dirpath: str | Path, every_n_steps: int = 0, every_n_epochs: int = 1, **kwargs: Any) -> None:
        settings = {"filename": "step_{step:07d}", "auto_insert_metric_name": False, "save_top_k": -1,
                    "save_last": True, "enable_version_counter": False, **kwargs}
        super().__init__(dirpath=str(dirpath), every_n_train_steps=every_n_steps or None,
                         every_n_epochs=None if every_n_steps else every_n_epochs, **settings)

    @property
    def last_path(self) -> Path:
        return Path(self.dirpath) / (self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)

    def freeze(self) -> None:
        self.frozen = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        if self.frozen:
            return
        # Lightning writes this step's metrics only after these callbacks: write them first, so a kill during
        # the checkpoint below cannot lose the row of a step the checkpoint includes (the CSV logger drops the
        # repeat that Lightning then sends).
        trainer._logger_connector.update_train_step_metrics()
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        final = 0 < trainer.max_steps <= trainer.global_step
        if final and self._last_global_step_saved != trainer.global_step:  # the epoch-end saves then skip this step
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.frozen:
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.frozen:
            super().on_validation_end(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Leave last.ckpt at the step training ended on (not the last periodic one), unless preempted or written
        at that step already."""
        if not self.frozen and self._last_global_step_saved != trainer.global_step:
            trainer.save_checkpoint(self.last_path)
