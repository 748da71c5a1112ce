"""LoRA fine-tuning (Hu et al. 2021): frozen pretrained weights, trainable low-rank updates of the attention
projections, and a linear head.

A wrapped layer computes W x + b + (alpha / r) B A x with A (r x in) Kaiming-uniform and B (out x r) zero, so
training starts from the pretrained function exactly. After training, `merge_lora` folds each update into
its layer (W + (alpha / r) B A), giving plain nn.Linear layers and the original architecture at no extra cost.
Targets are Linear layers whose qualified name ends with one of `targets`: timm ViTs' `attn.qkv` and
`attn.proj`, and the text transformer's layers of the same names.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError
from selfsup.evaluation.finetune import Classifier, FinetuneProtocol, evaluate_classifier, train_classifier
from selfsup.evaluation.protocol import EvalContext

DEFAULT_TARGETS = ("attn.qkv", "attn.proj")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable rank-r update scaled by alpha / r."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"protocol.rank must be >= 1, got {rank}")
        self.base = base.requires_grad_(False)
        self.rank = rank
        self.scale = alpha / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear, and the LoRA reference code
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain nn.Linear with weight W + (alpha / r) B A and the same bias."""
        base = self.base
        layer = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                          device=base.weight.device, dtype=base.weight.dtype)
        layer.weight.copy_(base.weight + self.delta_weight().to(base.weight.dtype))
        if base.bias is not None:
            layer.bias.copy_(base.bias)
        return layer


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def apply_lora(model: nn.Module, targets: Sequence[str] = DEFAULT_TARGETS, rank: int = 8, alpha: float = 16.0,
               dropout: float = 0.0) -> list[str]:
    """Freeze `model` and wrap each target Linear in a LoRALinear; returns the wrapped layers' names."""
    model.requires_grad_(False)
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)
             and any(name == t or name.endswith("." + t) for t in targets)]
    if not names:
        raise ConfigError(f"LoRA found no Linear layer named *{' or *'.join(targets)} in {type(model).__name__}; "
                          "LoRA adapts attention projections (ViT and text backbones): use protocol=finetune for "
                          "ResNets, or set protocol.targets")
    for name in names:
        _replace(model, name, LoRALinear(model.get_submodule(name), rank, alpha, dropout))
    return names


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRALinear of `model` into a plain nn.Linear, in place; returns how many were merged."""
    names = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in names:
        _replace(model, name, model.get_submodule(name).merged())
    return len(names)


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]


class LoRAProtocol(FinetuneProtocol):
    """eval.py protocol=lora: the backbone frozen, LoRA on its attention projections, and a linear head.

    The reported metrics are those of the merged model (plain Linear layers), evaluated after training.
    """

    name = "lora"

    def __init__(self, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 targets: Sequence[str] = DEFAULT_TARGETS, epochs: int = 50, base_lr: float = 1e-3,
                 lr: float | None = None, weight_decay: float = 0.01, warmup_epochs: float = 5,
                 label_smoothing: float = 0.1, clip_grad: float | None = None,
                 views: Sequence[dict[str, Any]] | None = None) -> None:
        super().__init__(epochs=epochs, base_lr=base_lr, lr=lr, weight_decay=weight_decay, layer_decay=1.0,
                         warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, clip_grad=clip_grad,
                         views=views)
        if rank < 1:
            raise ConfigError(f"protocol.rank must be >= 1, got {rank}")
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.targets = tuple(targets)

    def prepare(self, backbone: nn.Module, ctx: EvalContext) -> Classifier:
        apply_lora(backbone, self.targets, self.rank, self.alpha, self.dropout)
        return Classifier(backbone.train(), ctx.num_classes)  # the head is trainable, the backbone is not

    def run(self, backbone: nn.Module, ctx: EvalContext) -> dict[str, float]:
        torch.manual_seed(ctx.seed)
        model = self.prepare(backbone, ctx)
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        metrics = train_classifier(model, ctx, self.name, self.epochs, self.learning_rate(ctx), self.weight_decay,
                                   1.0, self.warmup_epochs, self.label_smoothing, self.clip_grad)
        merged = merge_lora(model.backbone)
        final = evaluate_classifier(model, ctx, self.name)  # the merged model's own numbers
        return {**metrics, **final, "lora_layers": merged, "trainable_params": trained}
