"""Fashion-MNIST (Xiao et al. 2017): 70k labelled 28x28 grayscale images, read from its idx files.

Read from `root` when it is given (the idx files, or torchvision's FashionMNIST/raw layout under it; with
`download=true`, torchvision downloads into it), else from Debian's `dataset-fashion-mnist` package. A given
root is never silently replaced by the Debian copy: a root without the files is an error.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from selfsup.data.datamodule import ImageDataModule, TensorImages
from selfsup.errors import DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzipped) as a numpy array; a corrupt file raises DataError naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte idx file")
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, EOFError, struct.error) as e:
        raise DataError(f"cannot read {path}: {e}; delete it and fetch the data again") from e


def find_file(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


class FashionMNIST(ImageDataModule):
    same_size_source = True
    name = "fashion_mnist"
    classes = CLASSES

    def __init__(self, root: str | None = None, download: bool = False, image_size: int = 28, channels: int = 1,
                 mean: tuple[float, ...] = (0.2860,), std: tuple[float, ...] = (0.3530,), **kwargs) -> None:
        if channels == 3 and len(mean) == 1:  # gray images as RGB, for backbones pretrained on colour (CLIP)
            mean, std = tuple(mean) * 3, tuple(std) * 3
        super().__init__(image_size=image_size, channels=channels, mean=mean, std=std, **kwargs)
        self.root = Path(root).expanduser() if root else None
        self.download = download

    def search_dirs(self) -> list[Path]:
        return [self.root, self.root / "FashionMNIST" / "raw"] if self.root else [DEBIAN_DIR]

    def _find(self) -> dict[str, tuple[Path, Path]] | None:
        dirs = self.search_dirs()
        found = {split: (find_file(dirs, img), find_file(dirs, lab)) for split, (img, lab) in FILES.items()}
        return found if all(p is not None for pair in found.values() for p in pair) else None

    def locate(self) -> dict[str, tuple[Path, Path]]:
        found = self._find()
        if found is None and self.download:
            import torchvision

            self.root = self.root or Path("data")
            for train in (True, False):
                torchvision.datasets.FashionMNIST(str(self.root), train=train, download=True)
            found = self._find()
        if found is None and self.root is not None:
            what = "does not exist" if not self.root.exists() else "holds no Fashion-MNIST idx files"
            raise DataError(
                f"data.root={self.root} {what} (looked in {', '.join(str(d) for d in self.search_dirs())}); put "
                "the idx files there, add data.download=true on a machine that is online, or drop data.root to read "
                "Debian's copy (`apt-get install -y dataset-fashion-mnist`)"
            )
        if found is None:
            raise DataError(
                f"Fashion-MNIST not found (looked in {DEBIAN_DIR}); run `apt-get install -y dataset-fashion-mnist`, "
                "set data.root=DIR holding its idx files, or add data.download=true on a machine that is online"
            )
        return found

    def load(self) -> tuple[Dataset, Dataset]:
        splits = {}
        for split, (img_path, lab_path) in self.locate().items():
            images, labels = read_idx(img_path), read_idx(lab_path)
            if images.ndim != 3 or len(images) != len(labels):
                raise DataError(f"{img_path} and {lab_path} do not hold matching images and labels")
            tensor = torch.from_numpy(images.copy())
            if self.channels == 3:
                tensor = tensor.unsqueeze(1).expand(-1, 3, -1, -1)  # a view: no copy
            splits[split] = TensorImages(tensor, torch.from_numpy(labels.astype(np.int64)))
        return splits["train"], splits["test"]
