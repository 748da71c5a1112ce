"""CIFAR-10, CIFAR-100 and STL-10 through torchvision, from `root` or downloaded with `download=true`."""
from __future__ import annotations

from pathlib import Path

import torchvision
from torch.utils.data import Dataset

from selfsup.data.datamodule import ImageDataModule
from selfsup.errors import ConfigError, DataError

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
}


class TorchvisionImages(ImageDataModule):
    """A torchvision dataset by name: cifar10, cifar100 or stl10 (STL-10 pretrains on its unlabeled split)."""
    same_size_source = True

    def __init__(self, dataset: str = "cifar10", root: str = "data", download: bool = False,
                 image_size: int | None = None, channels: int = 3, stl10_train_split: str = "train+unlabeled",
                 **kwargs) -> None:
        if dataset not in CIFAR_STATS:
            raise ConfigError(f"unknown torchvision dataset '{dataset}'; choose one of {sorted(CIFAR_STATS)}")
        mean, std = CIFAR_STATS[dataset]
        kwargs.setdefault("mean", mean)
        kwargs.setdefault("std", std)
        super().__init__(image_size=image_size or (96 if dataset == "stl10" else 32), channels=channels, **kwargs)
        self.dataset = dataset
        self.root = Path(root)
        self.download = download
        self.stl10_train_split = stl10_train_split
        self.name = dataset

    def _make(self, split: str) -> Dataset:
        if self.dataset == "stl10":
            stl_split = self.stl10_train_split if split == "train" else "test"
            return torchvision.datasets.STL10(str(self.root), split=stl_split, download=self.download)
        cls = torchvision.datasets.CIFAR10 if self.dataset == "cifar10" else torchvision.datasets.CIFAR100
        return cls(str(self.root), train=split == "train", download=self.download)

    def load(self) -> tuple[Dataset, Dataset]:
        try:
            return self._make("train"), self._make("test")
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted..."
            raise DataError(
                f"{self.dataset} not found under {self.root.resolve()} ({e}); set data.root=DIR holding it, "
                "or add data.download=true on a machine that is online"
            ) from e
