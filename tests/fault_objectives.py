"""Objectives for fault-injection tests (importable by train.py when tests/ is on PYTHONPATH)."""
from __future__ import annotations

import torch

from selfsup.objectives.mae import MAE


class NaNMAE(MAE):
    """MAE whose loss is NaN on the given training calls (1-based)."""

    def __init__(self, *args, nan_at_calls: list[int] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nan_at_calls, self.calls = set(nan_at_calls), 0

    def forward(self, backbone, batch):
        out = super().forward(backbone, batch)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls in self.nan_at_calls:
                out.loss = out.loss * float("nan")
        return out
