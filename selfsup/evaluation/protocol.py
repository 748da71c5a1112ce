"""What every evaluation protocol gets (EvalContext) and implements (Protocol.run)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, ContextManager

import torch
from torch import nn

from selfsup.evaluation.features import FeatureSet, autocast_for, extract

EVAL_VIEWS = [{"key": "image"}]  # resize + centre crop: what kNN and probes see


def no_log(metrics: dict[str, float], step: int) -> None:
    """The default logger: nothing."""


@dataclass
class EvalContext:
    """The labelled data, where to run, and where metrics go. Sample caps apply to the cached features of
    kNN and linear probes and to the training split of fine-tuning (an evenly spread subset of each split; None:
    all of it). `adapter_dir`: where a protocol that trains an adapter saves it (LoRA, in peft's format; eval.py:
    RUN/adapters/<protocol>/); None: it is not saved."""

    data: Any  # a KeyedDataModule built with the protocol's `views`
    device: torch.device
    num_classes: int
    precision: str = "auto"
    seed: int = 0
    batch_size: int | None = None
    max_train_samples: int | None = None
    max_val_samples: int | None = None
    log: Callable[[dict[str, float], int], None] = field(default=no_log)
    captions: Callable[[], Any] | None = None  # image-text runs: the run's caption tokenizer (zero-shot prompts)
    adapter_dir: Path | None = None

    def autocast(self) -> ContextManager:
        return autocast_for(self.device, self.precision)

    def features(self, backbone: nn.Module, split: str) -> FeatureSet:
        """The frozen backbone's features of a split, with eval views, in index order."""
        cap = self.max_train_samples if split == "train" else self.max_val_samples
        loader = self.data.eval_dataloader(split, max_samples=cap, batch_size=self.batch_size)
        return extract(backbone, loader, self.device, self.data.normalize, self.autocast)


class Protocol:
    """An evaluation of a pretrained backbone on labelled data; `run` returns the metrics for results.json.

    `views`: the training views the data module makes for it (fine-tuning augments; frozen-feature protocols
    only use eval views). Every protocol but retrieval needs labels. `eval_model_modality`: the protocol runs
    on the objective's eval model (Objective.eval_model) of that modality instead of the backbone;
    `trains`: it trains on the data's training batches (fine-tuning, LoRA: the data must hold a full batch).
    """

    name: ClassVar[str]
    views: list[dict[str, Any]] = EVAL_VIEWS
    needs_labels: ClassVar[bool] = True
    eval_model_modality: ClassVar[str | tuple[str, ...] | None] = None
    trains: ClassVar[bool] = False

    def run(self, backbone: nn.Module, ctx: EvalContext) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError
