"""The MLP heads of the joint-embedding objectives: SimCLR's and BYOL's two-layer heads, and the deeper
BatchNorm projectors of VICReg, Barlow Twins and MoCo v3."""
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


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 3, batch_norm: bool = True,
                   last_bn: bool = False) -> nn.Sequential:
    """`layers` linear layers without biases, each but the last followed by BatchNorm and ReLU, and the last by a
    BatchNorm without affine parameters when `last_bn` (MoCo v3's projector).

    VICReg's expander and Barlow Twins' projector are this with 3 layers (VICReg's hidden biases are omitted:
    the BatchNorm after each one subtracts them again); MoCo v3's projector has 2 (ResNet) or 3 (ViT) and
    its predictor 2. `batch_norm=False` drops the hidden BatchNorms (then the hidden layers keep biases).
    """
    if layers < 1:
        raise ValueError(f"a projection MLP needs at least one layer, got {layers}")
    dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
    parts: list[nn.Module] = []
    for i in range(layers):
        last = i == layers - 1
        parts.append(nn.Linear(dims[i], dims[i + 1], bias=not (batch_norm or last)))
        if not last:
            parts += [nn.BatchNorm1d(dims[i + 1]) if batch_norm else nn.Identity(), nn.ReLU(inplace=True)]
    if last_bn:
        parts.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*parts)
