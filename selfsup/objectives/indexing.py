"""Tensor indexing shared by objectives that predict at chosen positions (masked patches, masked tokens)."""
from __future__ import annotations

import torch


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per-sample rows: x (B, N, D), index (B, n) -> (B, n, D)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
