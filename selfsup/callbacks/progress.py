"""Lightning's progress bar, fed without a device sync per step."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar


class ProgressBar(TQDMProgressBar):
    """Shows the training loss without logging it as a progress-bar metric: Lightning turns those into Python
    numbers after every step, one host-device sync each. This bar keeps the step's loss tensor and reads it
    only when it refreshes (every `refresh_rate` steps, which configs/callbacks/progress_bar.yaml sets to the
    logging interval, where the loggers read their values anyway)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loss: torch.Tensor | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self._loss = loss.detach() if isinstance(loss, torch.Tensor) else None
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        if self._loss is not None:
            items["loss"] = f"{float(self._loss):.4g}"
        return items
