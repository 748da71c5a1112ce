"""Fixed 2-D sine-cosine position embeddings (Vaswani et al. 2017, in 2-D as in MoCo v3 and MAE)."""
from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(len(positions), dim): half sines, half cosines of positions at geometric frequencies."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, num_prefix: int = 0) -> torch.Tensor:
    """(num_prefix + grid_h * grid_w, dim) float32, row-major over the grid; prefix tokens get zeros."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    ys, xs = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, xs.flatten()), sincos_1d(dim // 2, ys.flatten())], dim=1)
    return torch.cat([torch.zeros(num_prefix, dim, dtype=emb.dtype), emb]).float()
