"""Online evaluation during pretraining: weighted kNN and a linear probe, on by default where data has labels,
and zero-shot classification and retrieval for CLIP runs on image-text data.

- `KNNMonitor`: every N epochs and at the end of training, features of (a fixed subset of) the training split
  are the bank and the validation split the queries, both with eval views; weighted kNN on cosine similarity
  (knn.py) gives `val/knn_top1`, `val/knn_top5` (k = 20) and `val/knn200_top1`, ... (k = 200).
- `LinearProbeMonitor`: a linear probe (BatchNorm without affine + Linear) trained with its own optimizer on the
  detached features of each training batch (StepOutput.features). It logs `train/linear_top1` (on the training
  batches of the epoch) and `val/linear_top1` every epoch. Its weights, optimizer and running counts are
  callback state, so they are in every checkpoint and a resumed run continues the same probe. Nothing of it
  touches the backbone's gradients: it runs after the optimizer step on detached features.
- `ZeroShotMonitor`: for objectives whose eval model is image-text (a dual encoder), zero-shot accuracy on the
  validation images' labels (or on another labelled
  image source, `monitors.zero_shot.data`) and its image <-> text retrieval on the validation pairs
  (evaluation/zero_shot.py).

All read the evaluation splits through `EvalFeatures`, which computes them once per epoch for both, shards them
over the processes of a DDP run and gathers them back in order. Rows go to the run's loggers directly, at the
step of the epoch's last batch, as Lightning's validation rows: a checkpoint written at the epoch's end is at
the next step, so resuming from it keeps these rows (runs.trim_metrics drops rows from the checkpoint's step on)
and, the epoch being over, the resumed run does not write them again.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn

from selfsup.data.datamodule import spread_indices
from selfsup.errors import ConfigError
from selfsup.evaluation.features import FeatureSet, extract, num_classes_of
from selfsup.evaluation.knn import DEFAULT_K, DEFAULT_TEMPERATURE, knn_accuracy
from selfsup.evaluation.linear import LinearProbe, evaluate_probe, make_optimizer
from selfsup.evaluation.zero_shot import (
    class_embeddings,
    default_templates,
    dual_encoder_metrics,
    media_of,
    pair_ids,
)
from selfsup.modalities import PAIRED_MODALITIES

AUTO_CAPS = {"cuda": {"train": 50_000, "val": 10_000}, "cpu": {"train": 512, "val": 256}}


def _cap(value: int | str | None, split: str, device: torch.device) -> int | None:
    """`auto`: a cap by device (a GPU embeds tens of thousands of images in seconds, a CPU a few hundred)."""
    if value == "auto":
        return AUTO_CAPS["cuda" if device.type == "cuda" else "cpu"][split]
    return None if value is None else int(value)


def _preempted(trainer: pl.Trainer) -> bool:
    """Whether the run is stopping for a preemption (then there is no time to evaluate); the same on all ranks."""
    return any(getattr(cb, "frozen", False) for cb in trainer.checkpoint_callbacks)


def last_epoch(trainer: pl.Trainer) -> bool:
    """Whether the epoch that just ended is the run's last (budget reached or stopping)."""
    if _preempted(trainer):
        return False
    if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        return True
    if trainer.max_epochs is not None and trainer.max_epochs > 0 and trainer.current_epoch + 1 >= trainer.max_epochs:
        return True
    return bool(trainer.should_stop)


def due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """Every `every_n_epochs` epochs (0: never) and after the last, but not while stopping for a preemption."""
    if _preempted(trainer):
        return False
    periodic = every_n_epochs > 0 and (trainer.current_epoch + 1) % every_n_epochs == 0
    return periodic or last_epoch(trainer)


def log_row(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """One row in every logger of the run at the step of the last batch, as Lightning's own rows (rank zero)."""
    if not trainer.is_global_zero:
        return
    row = {**metrics, "epoch": trainer.current_epoch}
    for logger in trainer.loggers:
        logger.log_metrics(row, step=max(0, trainer.global_step - 1))


def eval_model(pl_module: pl.LightningModule) -> torch.nn.Module:
    """The model the objective is evaluated with (Objective.eval_model): its backbone, or more (a dual encoder)."""
    return pl_module.objective.eval_model(pl_module.backbone)


def probed_backbone(pl_module: pl.LightningModule) -> torch.nn.Module:
    """The backbone that kNN, the probes and the health monitors embed with: the eval model (DINO's teacher), or the
    run's own backbone where the eval model is a dual encoder (CLIP's image tower, before its projection)."""
    model = eval_model(pl_module)
    return pl_module.backbone if getattr(model, "modality", None) in PAIRED_MODALITIES else model


class EvalFeatures(pl.Callback):
    """Features of the evaluation splits at the current step, computed once for all monitors.

    Each process embeds every W-th sample of the chosen subset; the pieces are gathered back into subset order,
    so the result is the same for any number of processes. Results are reused within one global step only, and
    dropped at the end of each epoch (as a callback registered after the monitors) to free device memory.
    """

    def __init__(self, max_train_samples: int | str | None = "auto", max_val_samples: int | str | None = "auto",
                 batch_size: int | None = None,
                 encoder: Callable[[pl.LightningModule], torch.nn.Module] = probed_backbone,
                 data: Any = None) -> None:
        self.caps = {"train": max_train_samples, "val": max_val_samples}
        self.batch_size = batch_size
        self.encoder = encoder
        self.data = data  # None: the training run's data module
        self._cache: dict[str, tuple[int, FeatureSet | None]] = {}

    def get(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> FeatureSet | None:
        cached = self._cache.get(split)
        if cached is None or cached[0] != trainer.global_step:
            cached = self._cache[split] = (trainer.global_step, self._compute(trainer, pl_module, split))
        return cached[1]

    def _compute(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> FeatureSet | None:
        data = self.data if self.data is not None else trainer.datamodule
        dataset = data.eval_dataset(split)
        if dataset is None:
            return None
        chosen = spread_indices(len(dataset), _cap(self.caps[split], split, pl_module.device))
        rank, world = trainer.global_rank, trainer.world_size
        per_rank = math.ceil(len(chosen) / world)
        padded = chosen + chosen[: per_rank * world - len(chosen)]  # every rank embeds as many samples
        loader = data.eval_dataloader(split, batch_size=self.batch_size, indices=padded[rank::world])
        feats = extract(self.encoder(pl_module), loader, pl_module.device, data.normalize,
                        trainer.precision_plugin.forward_context)
        if world == 1:
            return feats
        def in_order(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            g = pl_module.all_gather(t)  # (world, per_rank, ...): row j of rank r is sample j * world + r
            return g.transpose(0, 1).reshape(world * per_rank, *g.shape[2:])[: len(chosen)]

        return feats.map(in_order)

    def clear(self) -> None:
        self._cache.clear()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clear()  # registered after the monitors: they have used this epoch's features


class KNNMonitor(pl.Callback):
    """Weighted kNN accuracy (k = 20 and 200, T = 0.07) every `every_n_epochs` epochs and at the end of training
    (every_n_epochs = 0: at the end only)."""

    def __init__(self, features: EvalFeatures | None = None, every_n_epochs: int = 1,
                 k: Sequence[int] = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE) -> None:
        if every_n_epochs < 0:
            raise ConfigError(f"monitors.knn.every_n_epochs must be >= 0, got {every_n_epochs}")
        if not k or any(int(v) < 1 for v in k):
            raise ConfigError(f"monitors.knn.k must be a list of positive integers, got {list(k)}")
        if temperature <= 0:
            raise ConfigError(f"monitors.knn.temperature must be positive, got {temperature}")
        self.features = features or EvalFeatures()
        self.every_n_epochs = every_n_epochs
        self.k = [int(v) for v in k]
        self.temperature = temperature

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        bank = self.features.get(trainer, pl_module, "train")
        queries = self.features.get(trainer, pl_module, "val")
        if bank is None or queries is None:
            return {}
        return knn_accuracy(bank, queries, self.k, self.temperature)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if due(trainer, self.every_n_epochs):
            metrics = self.evaluate(trainer, pl_module)
            if metrics:
                log_row(trainer, metrics)


class LinearProbeMonitor(pl.Callback):
    """A linear probe trained online on the detached features of training batches, with its own optimizer."""

    def __init__(self, features: EvalFeatures | None = None, optimizer: str = "adamw", lr: float = 1e-3,
                 weight_decay: float = 0.0, momentum: float = 0.9) -> None:
        make_optimizer(optimizer, [torch.zeros(1, requires_grad=True)], lr)  # fails early on a bad name
        self.features = features or EvalFeatures()
        self.optimizer_name = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.probe: LinearProbe | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending: dict[str, Any] | None = None
        self._correct = self._seen = None  # this epoch's training-batch counts, on the device
        self._count_epoch = -1  # the epoch they belong to
        self._warned = False

    # -- building, and state in checkpoints -------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.probe is None and trainer.datamodule is not None:
            self.probe = LinearProbe(pl_module.backbone.num_features, num_classes_of(trainer.datamodule))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe is None:
            return
        self.probe.to(pl_module.device)
        if self.optimizer is None:
            self.optimizer = make_optimizer(self.optimizer_name, self.probe.parameters(), self.lr,
                                            self.weight_decay, self.momentum)
        self._apply_pending()

    def _apply_pending(self) -> None:
        if self._pending is None or self.optimizer is None:
            return
        state, self._pending = self._pending, None
        self.probe.load_state_dict(state["probe"])
        self.optimizer.load_state_dict(state["optimizer"])
        device = next(self.probe.parameters()).device
        self._correct = torch.tensor(state["correct"], device=device)
        self._seen = torch.tensor(state["seen"], device=device)
        self._count_epoch = state.get("epoch", -1)

    def state_dict(self) -> dict[str, Any]:
        if self.probe is None or self.optimizer is None:
            return {}
        return {"probe": self.probe.state_dict(), "optimizer": self.optimizer.state_dict(),
                "correct": int(self._correct) if self._correct is not None else 0,
                "seen": int(self._seen) if self._seen is not None else 0, "epoch": self._count_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "probe" in state:
            self._pending = state
            self._apply_pending()  # now if the probe exists already, else in on_fit_start

    # -- training ---------------------------------------------------------------------------------------------
    def train_step(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """One optimizer step of the probe on detached features; counts its training-batch accuracy."""
        if len(labels) < 2:  # BatchNorm needs two samples
            return
        keep = labels >= 0  # unlabelled samples (-1) are masked, not dropped: no host sync
        with torch.autocast(features.device.type, enabled=False):
            logits = self.probe(features.detach().float())
            loss = F.cross_entropy(logits, labels.masked_fill(~keep, -100), ignore_index=-100,
                                   reduction="sum") / keep.sum().clamp_min(1)  # 0, not NaN, without labels
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        correct = ((logits.argmax(1) == labels) & keep).sum()
        if self._correct is None:
            self._correct = torch.zeros_like(correct)
            self._seen = torch.zeros_like(correct)
        self._correct += correct
        self._seen += keep.sum()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._count_epoch != trainer.current_epoch:  # a resumed run keeps the counts of its unfinished epoch
            self._correct = self._seen = None
            self._count_epoch = trainer.current_epoch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.probe is None or not isinstance(outputs, dict) or "label" not in batch:
            return
        features = outputs.get("features")
        if features is None:
            if not self._warned:
                rank_zero_warn(f"online linear probe: {type(pl_module.objective).__name__} gives no features "
                               "(StepOutput.features); the probe is skipped")
                self._warned = True
            return
        labels = batch["label"]
        if trainer.world_size > 1:  # every process trains the same probe on the global batch
            features = pl_module.all_gather(features.detach()).flatten(0, 1)
            labels = pl_module.all_gather(labels).flatten(0, 1)
        self.train_step(features, labels)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe is None or _preempted(trainer):
            return
        metrics: dict[str, float] = {}
        if self._seen is not None and int(self._seen) > 0:
            metrics["train/linear_top1"] = int(self._correct) / int(self._seen)
        val = self.features.get(trainer, pl_module, "val")
        if val is not None and val.labels is not None:
            metrics.update(evaluate_probe(self.probe, val.labelled()))
        self._correct = self._seen = None
        if metrics:
            log_row(trainer, metrics)


class ZeroShotMonitor(pl.Callback):
    """Image-text and audio-text eval models (Objective.eval_model; a dual encoder): zero-shot top-1 / top-5 on
    labelled validation images or sounds (class names x prompt templates) and image (audio) <-> text Recall@1/5/10
    on the held-out pairs (evaluation/zero_shot.py), every N epochs and at the end of training. The labelled images
    (or sounds) are `data` (e.g. an ImageNet validation folder, as open_clip evaluates during training), else the
    training data's own labels. Retrieval ranks each query among the (capped) validation pairs. Inert for
    objectives whose eval model is not a dual encoder."""

    def __init__(self, every_n_epochs: int = 1, templates: Sequence[str] | None = None,
                 max_val_samples: int | str | None = "auto", batch_size: int | None = None, data: Any = None) -> None:
        if every_n_epochs < 0:
            raise ConfigError(f"monitors.zero_shot.every_n_epochs must be >= 0, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.templates = list(templates) if templates else None  # None: default_templates of the model
        self.pairs = EvalFeatures(max_val_samples=max_val_samples, batch_size=batch_size, encoder=eval_model)
        self.labelled = EvalFeatures(max_val_samples=max_val_samples, batch_size=batch_size, encoder=eval_model,
                                     data=data) if data is not None else None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dual = eval_model(pl_module)
        if getattr(dual, "modality", None) not in PAIRED_MODALITIES or not due(trainer, self.every_n_epochs):
            return
        own = trainer.datamodule
        class_emb = self._class_embeddings(own if self.labelled is None else self.labelled.data, dual, pl_module,
                                           trainer)
        metrics: dict[str, float] = {}
        if self.labelled is not None:
            images = self.labelled.get(trainer, pl_module, "val")
            metrics.update(dual_encoder_metrics(images, class_emb, media=media_of(dual)))
            class_emb = None  # the training data's own labels are not classified then
        pairs = self.pairs.get(trainer, pl_module, "val")
        if pairs is not None:
            metrics.update(dual_encoder_metrics(pairs, class_emb, pair_ids(own, "val", pairs.index), media_of(dual)))
        self.pairs.clear()
        if self.labelled is not None:
            self.labelled.clear()
        if metrics:
            log_row(trainer, {f"val/{name}": value for name, value in metrics.items()})

    def _class_embeddings(self, data: Any, dual: torch.nn.Module, pl_module: pl.LightningModule,
                          trainer: pl.Trainer) -> torch.Tensor | None:
        names = data.class_names() if hasattr(data, "class_names") else None
        if not names:
            return None
        dual.eval()
        try:
            templates = self.templates or default_templates(dual, data)
            return class_embeddings(dual.encode_text, trainer.datamodule.captions(), names, templates,
                                    pl_module.device, trainer.precision_plugin.forward_context)
        finally:
            dual.train()
