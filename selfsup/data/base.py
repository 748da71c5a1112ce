"""The image data module every image source builds on: views, keyed sampling, device-side normalisation."""
from __future__ import annotations

import os
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from selfsup.data.sampling import EpochSampler, KeyedViews
from selfsup.data.views import build_view, eval_view
from selfsup.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TensorImages(Dataset):
    """In-memory uint8 images (N, H, W) or (N, C, H, W), with integer labels or none."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.images = images if images.ndim == 4 else images.unsqueeze(1)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | None]:
        return self.images[i], (int(self.labels[i]) if self.labels is not None else None)


def default_workers() -> int:
    """Data workers per process: the CPU cores this process may use, split over local GPUs, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpus = max(1, torch.cuda.device_count())
    return max(1, min(8, cores // gpus))


class ImageDataModule(pl.LightningDataModule):
    """Subclasses implement `load()` -> (train dataset, validation dataset or None) of (image, label) pairs.

    Batches are dicts: one uint8 field per view of the objective (normalised to float on the device),
    `label` where the source has labels, `index` and `key` (the sample's randomness key).
    """

    modality = "image"
    name = "images"

    def __init__(self, batch_size: int = 256, image_size: int = 224, channels: int = 3,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 num_workers: int | str = "auto", seed: int = 0, val_batch_size: int | None = None,
                 views: list[dict[str, Any]] | None = None, pin_memory: bool = True, on_error: str = "skip") -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be positive, got {batch_size}")
        self.batch_size, self.image_size, self.channels = batch_size, image_size, channels
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"data.mean and data.std need {channels} values (data.channels), got {len(mean)}, {len(std)}")
        if on_error not in ("skip", "raise"):
            raise ConfigError(f"data.on_error must be 'skip' or 'raise', got '{on_error}'")
        self.on_error = on_error
        self.num_workers = default_workers() if num_workers == "auto" else int(num_workers)
        self.seed, self.val_batch_size, self.pin_memory = seed, val_batch_size or batch_size, pin_memory
        self.view_specs = [dict(v) for v in (views or [{"key": "image"}])]
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._resume: dict[str, int] | None = None
        self._count_epoch, self._batches_done = 0, 0  # training batches consumed in the current epoch

    # -- what subclasses provide -------------------------------------------------------------------------
    def load(self) -> tuple[Dataset, Dataset | None]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- Lightning hooks ---------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, val = self.load()
        if len(train) == 0:
            raise DataError(f"{self.name}: the training split is empty")
        views = {spec["key"]: build_view(spec, self.image_size) for spec in self.view_specs}
        self.train_set = KeyedViews(train, views, self.seed, self.on_error, self.source)
        if val is not None and len(val) > 0:
            self.val_set = KeyedViews(val, {key: eval_view(self.image_size) for key in views}, self.seed,
                                      self.on_error, self.source)

    @property
    def source(self) -> str:
        """Where the data comes from, for messages."""
        root = getattr(self, "root", None)
        return f"{self.name} ({root})" if root else self.name

    def check_before_training(self, devices: int = 1) -> None:
        """Fail early: a source with no readable sample, or a global batch larger than the training split."""
        self.setup()
        self.train_set[(0, 0)]  # raises DataError (naming the source) when no sample can be read
        need = self.batch_size * devices
        if need > len(self.train_set):
            raise ConfigError(
                f"global batch {need} (data.batch_size={self.batch_size} x {devices} devices) is larger than the "
                f"{len(self.train_set)} training samples of {self.name}; lower data.batch_size"
            )

    def _loader(self, dataset: Dataset, sampler: EpochSampler, batch_size: int) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.pin_memory and torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0, drop_last=False,
                          prefetch_factor=4 if self.num_workers > 0 else None)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        sampler = EpochSampler(len(self.train_set), self.batch_size, self.seed, shuffle=True, drop_last=True)
        if self._resume:
            epoch, done = self._resume["epoch"], self._resume["batches_done"]
            if done >= len(sampler) // self.batch_size:  # saved at the end of an epoch: start the next
                epoch, done = epoch + 1, 0
            sampler.resume(epoch, done)
            self._count_epoch, self._batches_done = epoch, done
        return self._loader(self.train_set, sampler, self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        if self.val_set is None:
            return []
        sampler = EpochSampler(len(self.val_set), self.val_batch_size, self.seed, shuffle=False, drop_last=False)
        return self._loader(self.val_set, sampler, self.val_batch_size)

    def preview_batch(self, n: int) -> dict[str, Any]:
        """The first n samples of the validation split (else the training split), collated, still uint8."""
        self.setup()
        dataset = self.val_set if self.val_set is not None else self.train_set
        return default_collate([dataset[(0, i)] for i in range(min(n, len(dataset)))])

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Normalise uint8 views to float on the device, and count training batches for exact resume."""
        if self.trainer is not None and self.trainer.training:
            if self.trainer.current_epoch != self._count_epoch:
                self._count_epoch, self._batches_done = self.trainer.current_epoch, 0
            self._batches_done += 1
        return self.normalize(batch)

    def normalize(self, batch: dict[str, Any]) -> dict[str, Any]:
        for spec in self.view_specs:
            images = batch[spec["key"]]
            if images.dtype == torch.uint8:
                mean, std = self.mean.to(images.device), self.std.to(images.device)
                batch[spec["key"]] = (images.float() / 255.0 - mean) / std
        return batch

    # -- exact resume: Lightning saves and restores these with each checkpoint ---------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._count_epoch, "batches_done": self._batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state)
