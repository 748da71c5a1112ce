"""Objectives for fault-injection tests (importable by train.py when tests/ is on PYTHONPATH)."""
from __future__ import annotations

import torch

from selfsup.objectives.mae import MAE


class NaNMAE(MAE):
    """MAE whose loss is NaN on the given training calls (1-based), on every process or only on `nan_on_rank`."""

    def __init__(self, *args, nan_at_calls: list[int] = (), nan_on_rank: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nan_at_calls, self.nan_on_rank, self.calls = set(nan_at_calls), nan_on_rank, 0

    def forward(self, backbone, batch):
        out = super().forward(backbone, batch)
        if torch.is_grad_enabled():
            self.calls += 1
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            if self.calls in self.nan_at_calls and self.nan_on_rank in (None, rank):
                out.loss = out.loss * float("nan")
        return out
