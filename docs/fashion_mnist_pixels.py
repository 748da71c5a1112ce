"""The raw-pixel baseline of docs/results.md: eval.py's weighted kNN and linear probe on normalised pixels.

    python docs/fashion_mnist_pixels.py [ROOT]      (ROOT: the four .gz files; default: Debian's package)

On Fashion-MNIST pixels are a strong representation for kNN (about 85%), so they, not only a random-init
backbone, are the floor a small pretraining budget has to be read against.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfsup.data.fashion_mnist import FashionMNIST, read_idx  # noqa: E402
from selfsup.evaluation.features import FeatureSet  # noqa: E402
from selfsup.evaluation.knn import knn_accuracy  # noqa: E402
from selfsup.evaluation.linear import train_linear_probe  # noqa: E402

MEAN, STD = 0.2860, 0.3530  # the data module's normalisation


def pixels(images: torch.Tensor, labels: torch.Tensor) -> FeatureSet:
    features = (images.reshape(len(images), -1).float() / 255 - MEAN) / STD
    return FeatureSet(features, labels.long(), torch.arange(len(images)))


def main(root: str | None = None) -> dict[str, float]:
    files = FashionMNIST(root=root).locate()
    train, val = (pixels(torch.from_numpy(read_idx(images).copy()), torch.from_numpy(read_idx(labels).copy()))
                  for images, labels in (files["train"], files["test"]))
    torch.manual_seed(0)
    results = knn_accuracy(train, val)
    _, linear = train_linear_probe(train, val, num_classes=10)  # the linear protocol's defaults
    results.update({k: v for k, v in linear.items() if k.startswith("val/")})
    return results


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else None), indent=2))
