"""Full fine-tuning: backbone + a linear head trained end to end on labelled data (MAE's recipe, simplified).

AdamW with the linear scaling rule (lr = base_lr x batch / 256), warm-up then cosine decay, label smoothing,
and layer-wise learning-rate decay for transformers (block i of L gets layer_decay^(L + 1 - (i + 1)) of the
rate; embeddings the least, the head the full rate), as BEiT and MAE fine-tune ViTs; the text transformer's
`blocks.i` and embeddings (token, position, segment) are read the same way. ResNets have no blocks list, so they
train at one rate. Image training batches use the protocol's augmented views (random resized crop and flip by
default); text data has no views, so its training batches are its token samples with their labels
(data.mode=lines). Each epoch ends with the validation split's top-1/top-5 on eval views.
Not included: mixup, cutmix, RandAugment, drop path, EMA.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError
from selfsup.evaluation.features import extract, features, to_device
from selfsup.evaluation.knn import topk_accuracy
from selfsup.evaluation.protocol import EvalContext, Protocol
from selfsup.optim import NO_DECAY_NAMES, scaled_lr, warmup_cosine

FINETUNE_VIEWS = [{"key": "image", "crop_scale": [0.08, 1.0], "hflip": 0.5}]
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBEDDING = ("embed", "cls_token", "reg_token", "mask_token")


class Classifier(nn.Module):
    """A backbone and a zero-initialised linear head; it takes the backbone's inputs (and has its modality), so
    `features(classifier, batch)` gives logits."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.modality = getattr(backbone, "modality", "image")
        self.head = nn.Linear(backbone.num_features, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, *inputs: Any) -> torch.Tensor:
        return self.head(self.backbone(*inputs))


def num_blocks(module: nn.Module) -> int:
    ids = [int(m.group(1)) for name, _ in module.named_parameters() if (m := _BLOCK.search(name))]
    return max(ids) + 1 if ids else 0


def layer_id(name: str, depth: int) -> int:
    """0 for embeddings and special tokens, i + 1 for transformer block i, depth + 1 for the rest (norm, head)."""
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    if any(token in name.rsplit(".", 1)[0] or name.endswith(token) for token in _EMBEDDING):
        return 0
    return depth + 1


def param_groups(model: Classifier, weight_decay: float, layer_decay: float = 1.0) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (layer, decayed or not), each group with its `lr_scale`.

    No weight decay on biases, norms, position embeddings and special tokens (as pretraining).
    """
    depth = num_blocks(model.backbone)
    explicit = set(model.backbone.no_weight_decay()) if hasattr(model.backbone, "no_weight_decay") else set()
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        inner = name[len("backbone."):] if name.startswith("backbone.") else name
        no_decay = p.ndim <= 1 or inner in explicit or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES
        layer = layer_id(name, depth) if depth and name.startswith("backbone.") else depth + 1
        scale = layer_decay ** (depth + 1 - layer) if depth else 1.0
        group = groups.setdefault((layer, no_decay), {"params": [], "lr_scale": scale,
                                                      "weight_decay": 0.0 if no_decay else weight_decay})
        group["params"].append(p)
    return list(groups.values())


@torch.no_grad()
def evaluate_classifier(model: nn.Module, ctx: EvalContext, prefix: str) -> dict[str, float]:
    """Top-1, top-5 and loss of a classifier on the validation split's eval views."""
    loader = ctx.data.eval_dataloader("val", max_samples=ctx.max_val_samples, batch_size=ctx.batch_size)
    out = extract(model, loader, ctx.device, ctx.data.normalize, ctx.autocast).labelled()
    acc = topk_accuracy(out.features, out.labels)
    return {f"val/{prefix}_top1": acc[1], f"val/{prefix}_top5": acc[5],
            f"val/{prefix}_loss": F.cross_entropy(out.features, out.labels).item()}


def train_classifier(model: Classifier, ctx: EvalContext, prefix: str, epochs: int, lr: float,
                     weight_decay: float, layer_decay: float = 1.0, warmup_epochs: float = 0.0,
                     label_smoothing: float = 0.0, clip_grad: float | None = None) -> dict[str, float]:
    """Train the classifier's trainable parameters on the training split; evaluate after each epoch.

    Returns the last epoch's validation metrics plus the best top-1 (`val/{prefix}_best_top1`).
    """
    data, device = ctx.data, ctx.device
    model.to(device)
    loader = data.train_dataloader(max_samples=ctx.max_train_samples)
    steps_per_epoch = len(loader)
    groups = param_groups(model, weight_decay, layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    factor = warmup_cosine(round(warmup_epochs * steps_per_epoch), epochs * steps_per_epoch)
    trainable = [p for g in groups for p in g["params"]]
    step, best, metrics = 0, 0.0, {}
    for epoch in range(epochs):
        model.train()
        loader.sampler.set_epoch(epoch)
        total = torch.zeros((), device=device)
        for batch in loader:
            for group in optimizer.param_groups:
                group["lr"] = lr * factor(step) * group["lr_scale"]
            batch = data.on_device(to_device(batch, device))
            with ctx.autocast():
                logits = features(model, batch)
            loss = F.cross_entropy(logits.float(), batch["label"], label_smoothing=label_smoothing, ignore_index=-1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad:
                torch.nn.utils.clip_grad_norm_(trainable, clip_grad)
            optimizer.step()
            total += loss.detach()
            step += 1
        metrics = {f"train/{prefix}_loss": total.item() / max(1, steps_per_epoch),
                   **evaluate_classifier(model, ctx, prefix)}
        best = max(best, metrics[f"val/{prefix}_top1"])
        ctx.log({**metrics, "epoch": epoch}, epoch)
    return {**metrics, f"val/{prefix}_best_top1": best}


class FinetuneProtocol(Protocol):
    """eval.py protocol=finetune: every backbone weight and a linear head, trained on augmented views."""

    name = "finetune"
    trains = True

    def __init__(self, epochs: int = 50, base_lr: float = 5e-4, lr: float | None = None, weight_decay: float = 0.05,
                 layer_decay: float = 0.75, warmup_epochs: float = 5, label_smoothing: float = 0.1,
                 clip_grad: float | None = None, views: Sequence[dict[str, Any]] | None = None) -> None:
        if epochs < 1:
            raise ConfigError(f"protocol.epochs must be >= 1, got {epochs}")
        if not 0 < layer_decay <= 1:
            raise ConfigError(f"protocol.layer_decay must lie in (0, 1], got {layer_decay}")
        self.epochs = epochs
        self.base_lr = base_lr
        self.lr = lr
        self.weight_decay = weight_decay
        self.layer_decay = layer_decay
        self.warmup_epochs = min(warmup_epochs, epochs)
        self.label_smoothing = label_smoothing
        self.clip_grad = clip_grad
        self.views = [dict(v) for v in (views or FINETUNE_VIEWS)]

    def learning_rate(self, ctx: EvalContext) -> float:
        return self.lr if self.lr is not None else scaled_lr(self.base_lr, ctx.data.batch_size)

    def prepare(self, backbone: nn.Module, ctx: EvalContext) -> Classifier:
        """The model to train: here the whole backbone and a head."""
        return Classifier(backbone.train(), ctx.num_classes)  # fixed sin-cos positions stay frozen

    def run(self, backbone: nn.Module, ctx: EvalContext) -> dict[str, float]:
        torch.manual_seed(ctx.seed)
        return self.fit(self.prepare(backbone, ctx), ctx)

    def fit(self, model: Classifier, ctx: EvalContext) -> dict[str, Any]:
        """Train the model's trainable parameters with this protocol's settings: the metrics and their count."""
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        metrics = train_classifier(model, ctx, self.name, self.epochs, self.learning_rate(ctx), self.weight_decay,
                                   self.layer_decay, self.warmup_epochs, self.label_smoothing, self.clip_grad)
        return {**metrics, "trainable_params": trainable}
