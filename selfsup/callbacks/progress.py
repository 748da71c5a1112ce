"""Lightning's progress bar, fed without a device sync per step."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar

SHOWN = {"train/loss": "loss"}


class ProgressBar(TQDMProgressBar):
    """Shows the training loss without logging it as a progress-bar metric: Lightning turns those into Python
    numbers after every step, one host-device sync each. This bar reads the logged value only when it
    refreshes (every `refresh_rate` steps, which train.py sets to the logging interval, where the loggers read
    the values anyway)."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        for name, short in SHOWN.items():
            value = trainer.logged_metrics.get(name)
            if value is not None:
                items[short] = f"{float(value):.4g}"
        return items
