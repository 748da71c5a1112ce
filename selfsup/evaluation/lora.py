"""LoRA fine-tuning (Hu et al. 2021) through Hugging Face peft: frozen pretrained weights, trainable low-rank
updates of the attention projections, and a linear head.

peft's LoRA layer computes W x + b + (alpha / r) B A x with A (r x in) Kaiming-uniform and B (out x r) zero, as
the paper's reference code, so training starts from the pretrained function exactly. peft rather than a layer of
our own so that the adapter is saved in the format the ecosystem loads (`adapter_config.json` +
`adapter_model.safetensors`: `PeftModel.from_pretrained(backbone, folder)`). After training, peft's
`merge_and_unload` folds each update into its layer (W + (alpha / r) B A), giving plain nn.Linear layers and the
original architecture at no extra cost; the reported metrics are those of the merged model.
Targets are Linear layers whose qualified name ends with one of `targets`: timm ViTs' `attn.qkv` and
`attn.proj`, and the text transformer's layers of the same names. peft is given their full names, so it adapts
exactly those layers (where a suffix also matches a module of another kind, which peft would refuse, only the
Linear layers).
peft is imported when LoRA is applied, not with this module: building the protocol from a config stays cheap.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from selfsup.errors import ConfigError
from selfsup.evaluation.finetune import Classifier, FinetuneProtocol, evaluate_classifier
from selfsup.evaluation.protocol import EvalContext

DEFAULT_TARGETS = ("attn.qkv", "attn.proj")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what peft's save_pretrained writes


def lora_targets(model: nn.Module, targets: Sequence[str] = DEFAULT_TARGETS) -> list[str]:
    """The qualified names of `model`'s Linear layers that LoRA adapts; a one-line ConfigError when there is none."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)
             and any(name == t or name.endswith("." + t) for t in targets)]
    if not names:
        raise ConfigError(f"LoRA found no Linear layer named *{' or *'.join(targets)} in {type(model).__name__}; "
                          "LoRA adapts attention projections (ViT and text backbones): use protocol=finetune for "
                          "ResNets, or set protocol.targets")
    return names


def apply_lora(model: nn.Module, targets: Sequence[str] = DEFAULT_TARGETS, rank: int = 8, alpha: float = 16.0,
               dropout: float = 0.0) -> nn.Module:
    """Freeze `model` and add peft LoRA layers to its target Linears (in place); returns the peft.PeftModel that
    wraps it, which takes `model`'s inputs, forwards its attributes (`modality`, `num_features`) and is what
    `save_adapter` and `merge_lora` act on."""
    if rank < 1:
        raise ConfigError(f"protocol.rank must be >= 1, got {rank}")
    names = lora_targets(model, targets)
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none",
                        init_lora_weights=True)  # A Kaiming-uniform, B zero: the pretrained function at step 0
    return get_peft_model(model, config)  # freezes everything but the LoRA factors


def lora_layers(model: nn.Module) -> list[nn.Module]:
    """The peft LoRA layers of a model (or of a Classifier around one)."""
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA factors A and B of every adapted layer: what trains besides the head."""
    return [p for layer in lora_layers(model) for factors in (layer.lora_A, layer.lora_B)
            for linear in factors.values() for p in linear.parameters()]


def merge_lora(model: nn.Module) -> nn.Module:
    """The backbone inside a PeftModel with each update folded into its layer (peft's merge_and_unload): plain
    nn.Linear layers with weight W + (alpha / r) B A, the original module, changed in place."""
    return model.merge_and_unload()


def save_adapter(model: nn.Module, folder: Path) -> Path:
    """peft's `save_pretrained` of a PeftModel's adapter into `folder` (adapter_config.json and
    adapter_model.safetensors), written beside it and renamed into place, so `folder` holds one whole adapter (the
    previous evaluation's until this one's is complete, then this one's). peft's model card template (README.md)
    is left out: for a backbone not from the Hub it is only empty headings."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = (folder.with_name(f".{folder.name}.{os.getpid()}.{what}") for what in ("tmp", "old"))
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp))
        (tmp / "README.md").unlink(missing_ok=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return folder


class LoRAProtocol(FinetuneProtocol):
    """eval.py protocol=lora: the backbone frozen, LoRA on its attention projections, and a linear head.

    The adapter is saved in peft's format before merging, into `ctx.adapter_dir` (eval.py: RUN/adapters/lora/);
    the reported metrics are those of the merged model (plain Linear layers), evaluated after training.
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
        self.targets = (targets,) if isinstance(targets, str) else tuple(targets)  # protocol.targets=attn.qkv

    def prepare(self, backbone: nn.Module, ctx: EvalContext) -> Classifier:
        """The backbone inside its PeftModel, and a head: the LoRA factors and the head are trainable, nothing else."""
        adapted = apply_lora(backbone, self.targets, self.rank, self.alpha, self.dropout)
        return Classifier(adapted.train(), ctx.num_classes)

    def run(self, backbone: nn.Module, ctx: EvalContext) -> dict[str, Any]:
        torch.manual_seed(ctx.seed)
        model = self.prepare(backbone, ctx)
        metrics = self.fit(model, ctx)  # layer_decay 1.0 (set in __init__): the LoRA factors train at one rate
        saved = {"adapter": str(save_adapter(model.backbone, ctx.adapter_dir))} if ctx.adapter_dir else {}
        layers = len(lora_layers(model))
        model.backbone = merge_lora(model.backbone)
        final = evaluate_classifier(model, ctx, self.name)  # the merged model's own numbers
        return {**metrics, **final, "lora_layers": layers, **saved}
