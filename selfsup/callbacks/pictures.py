"""Pictures of what the objective does (MAE: original | masked | reconstruction), every N epochs and at the end."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from selfsup.objectives.base import Objective

MIN_WIDTH = 384


def draws(objective: Objective) -> bool:
    """Whether the objective draws pictures at all (overrides `visualize`): else no preview batch is read."""
    return type(objective).visualize is not Objective.visualize


class Pictures(pl.Callback):
    """Saves `pictures/step_XXXXXXX.png` in the run folder from a fixed validation batch, and logs it to wandb."""

    def __init__(self, folder: str | Path, every_n_epochs: int = 5, num_images: int = 8) -> None:
        self.folder = Path(folder)
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self._batch: dict[str, Any] | None = None

    def _fixed_batch(self, trainer: pl.Trainer, device: torch.device) -> dict[str, Any] | None:
        if self._batch is None:
            dm = trainer.datamodule
            batch = {k: v.to(device) for k, v in dm.preview_batch(self.num_images).items()}
            self._batch = dm.normalize(batch)
        return self._batch

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path | None:
        if not trainer.is_global_zero or trainer.datamodule is None or not draws(pl_module.objective):
            return None
        path = self.folder / f"step_{trainer.global_step:07d}.png"
        if path.exists():
            return path
        was_training = pl_module.training
        pl_module.eval()
        with torch.autocast(pl_module.device.type, enabled=False):
            picture = pl_module.objective.visualize(pl_module.backbone, self._fixed_batch(trainer, pl_module.device))
        pl_module.train(was_training)
        if picture is None:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        scale = -(-MIN_WIDTH // picture.shape[-1])  # small images (28 px) are enlarged, pixels kept sharp
        picture = F.interpolate(picture.float().cpu()[None], scale_factor=scale, mode="nearest")[0]
        save_image(picture, path)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="pictures", images=[str(path)], step=trainer.global_step)
        return path

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.draw(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.draw(trainer, pl_module)
