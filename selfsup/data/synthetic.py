"""Synthetic labelled images for tests and benchmarks: no files, deterministic, any size."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from selfsup.data.datamodule import ImageDataModule, TensorImages


def make_images(n: int, channels: int, size: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise around a class-dependent brightness, so that class is (weakly) visible in the pixels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    base = (labels.float() + 0.5) / num_classes * 255
    noise = torch.randn(n, channels, size, size, generator=g) * 40
    return (base.view(-1, 1, 1, 1) + noise).clamp(0, 255).to(torch.uint8), labels


class Synthetic(ImageDataModule):
    same_size_source = True
    name = "synthetic"

    def __init__(self, num_samples: int = 1024, num_val_samples: int = 256, num_classes: int = 10,
                 image_size: int = 32, channels: int = 3, **kwargs) -> None:
        kwargs.setdefault("mean", (0.5,) * channels)
        kwargs.setdefault("std", (0.25,) * channels)
        super().__init__(image_size=image_size, channels=channels, **kwargs)
        self.num_samples = num_samples
        self.num_val_samples = num_val_samples
        self.num_classes = num_classes

    def load(self) -> tuple[Dataset, Dataset]:
        train = make_images(self.num_samples, self.channels, self.image_size, self.num_classes, seed=1)
        val = make_images(self.num_val_samples, self.channels, self.image_size, self.num_classes, seed=2)
        return TensorImages(*train), TensorImages(*val)
