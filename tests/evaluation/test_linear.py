"""The linear probe."""
from __future__ import annotations

import torch

from selfsup.evaluation.features import FeatureSet
from selfsup.evaluation.linear import train_linear_probe


def separable(n: int, w: torch.Tensor, g: torch.Generator) -> FeatureSet:
    """Points labelled by the argmax of a linear map, kept only with a margin: linearly separable."""
    x = torch.randn(n, w.shape[0], generator=g) * 3 + 1
    top = (x @ w).topk(2, dim=1).values
    x = x[top[:, 0] - top[:, 1] > 1.0]
    return FeatureSet(x, (x @ w).argmax(1), torch.arange(len(x)))


def test_linear_probe_separates_linearly_separable_features():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 4, generator=g)
    train, val = separable(3000, w, g), separable(1000, w, g)
    _, metrics = train_linear_probe(train, val, num_classes=4, epochs=20, optimizer="sgd", lr=0.1)
    assert metrics["val/linear_top1"] > 0.95
    assert metrics["train/linear_top1"] > 0.95
