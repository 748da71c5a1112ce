"""The MLP heads of the joint-embedding objectives (SimCLR projector, BYOL projector and predictor)."""
from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = True) -> nn.Sequential:
    """Linear -> BatchNorm -> ReLU -> Linear, the two-layer head of SimCLR and BYOL (BN optional)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=not batch_norm),
        nn.BatchNorm1d(hidden_dim) if batch_norm else nn.Identity(),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )
