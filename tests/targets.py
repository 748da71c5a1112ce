"""Classes that tests name in a `_target_` (a dotted path Hydra imports): importable as `targets.<Class>` in the test
process (tests/ is on sys.path there) and in train.py / eval.py subprocesses started with PYTHONPATH=tests."""
from __future__ import annotations

import torch

from selfsup.data.datamodule import TensorImages
from selfsup.data.synthetic import Synthetic
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


class Unlabelled(Synthetic):
    """Synthetic images without labels: what a supervised protocol must refuse."""

    def load(self):
        train, val = super().load()
        return TensorImages(train.images, None), TensorImages(val.images, None)


class TextBackbone:
    modality = "text"
