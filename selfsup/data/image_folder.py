"""Any folder of images, one sub-folder per class (torchvision's ImageFolder layout), e.g. ImageNet."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torchvision
from torch.utils.data import Dataset

from selfsup.data.datamodule import ImageDataModule
from selfsup.data.decode import open_image
from selfsup.errors import ConfigError, DataError


class ImageFolder(ImageDataModule):
    """`root/train/<class>/*.jpg` and optionally `root/val/<class>/*.jpg` (or `root/<class>/*` alone)."""

    name = "image_folder"

    def __init__(self, root: str | None = None, train_dir: str = "train", val_dir: str = "val", **kwargs) -> None:
        super().__init__(**kwargs)
        if not root:
            raise ConfigError("data=image_folder needs data.root=DIR, a folder with one sub-folder of images per class")
        self.root = Path(root).expanduser()
        self.train_dir = train_dir
        self.val_dir = val_dir

    def _folder(self, path: Path) -> Dataset:
        try:
            return torchvision.datasets.ImageFolder(str(path), loader=partial(open_image, channels=self.channels))
        except (FileNotFoundError, RuntimeError) as e:
            raise DataError(f"no images under {path} ({e}); put them in one sub-folder per class") from e

    def load(self) -> tuple[Dataset, Dataset | None]:
        if not self.root.is_dir():
            raise DataError(f"data.root {self.root} is not a folder; point it at your images")
        train_path = self.root / self.train_dir
        if not train_path.is_dir():
            return self._folder(self.root), None
        val_path = self.root / self.val_dir
        return self._folder(train_path), (self._folder(val_path) if val_path.is_dir() else None)
