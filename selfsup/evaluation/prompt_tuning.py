"""Prompt tuning: a frozen transformer, N learned prompt tokens in its input and a linear head on its pooled
features, the only trained parameters (Lester et al. 2021 for text; VPT, Jia et al. 2022, for ViTs).

Where the prompts go (selfsup/backbones/prompts.py): right after [CLS] (and a ViT's registers), with no position
embedding, so the pooled token stays where pooling reads it; `depth=shallow` inserts one set with the token
embeddings, `deep` a new set before every block (VPT-deep; P-tuning v2 for text), replacing the previous
block's prompt outputs. Pooling is the backbone's own ([CLS], or the mean over patches or real tokens) and never
includes the prompt outputs, so the features differ from the frozen backbone's only through attention to the
prompts. Initialisation: text prompts copy randomly drawn rows of the token embedding (word pieces, not the
special tokens; seeded), as Lester et al. found better than random vectors; ViT prompts are uniform(-v, v) with
v = sqrt(6 / (C p^2 + D)), Xavier-uniform over the patch projection's dimensions, as VPT.
The backbone is kept in eval mode (frozen means a fixed function: no dropout or drop path in it, as the linear
probe sees it); `dropout` applies to the prompts only (VPT's prompt dropout).
"""
from __future__ import annotations

import inspect
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from selfsup.data.tokenizer import SPECIAL_TOKENS
from selfsup.errors import ConfigError
from selfsup.evaluation.finetune import Classifier, FinetuneProtocol, num_blocks
from selfsup.evaluation.protocol import EvalContext

DEPTHS = ("shallow", "deep")
PROMPTS_FILE = "prompts.safetensors"


def takes_prompts(backbone: nn.Module) -> bool:
    """Whether the backbone's forward has a `prompts` argument (selfsup's ViT and text transformer)."""
    return "prompts" in inspect.signature(type(backbone).forward).parameters and num_blocks(backbone) > 0


def init_prompts(backbone: nn.Module, num_prompts: int, depth: str = "shallow", seed: int = 0) -> torch.Tensor:
    """Initial prompts (K, N, D) for a backbone that takes them: K = 1 (shallow) or its number of blocks (deep)."""
    if not takes_prompts(backbone):
        raise ConfigError(f"protocol=prompt_tuning needs a transformer backbone that takes prompts (ViT, text); "
                          f"{type(backbone).__name__} takes none: use protocol=linear|finetune")
    if depth not in DEPTHS:
        raise ConfigError(f"protocol.depth must be one of {', '.join(DEPTHS)}, got '{depth}'")
    sets = num_blocks(backbone) if depth == "deep" else 1
    generator = torch.Generator().manual_seed(seed)
    if getattr(backbone, "modality", "image") == "text":
        table = backbone.input_embedding.weight.detach()
        words = torch.arange(len(SPECIAL_TOKENS), len(table))
        rows = words[torch.randint(len(words), (sets, num_prompts), generator=generator)]
        return table[rows.to(table.device)].float().cpu().clone()
    dim = backbone.num_features
    bound = math.sqrt(6.0 / (backbone.in_chans * backbone.patch_size ** 2 + dim))
    return (torch.rand(sets, num_prompts, dim, generator=generator) * 2 - 1) * bound


class Prompted(nn.Module):
    """A frozen backbone that gets the learned prompts in every forward; it takes the backbone's inputs and has
    its modality and num_features, so Classifier, `features` and train_classifier use it as a backbone."""

    def __init__(self, backbone: nn.Module, prompts: torch.Tensor, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        self.prompts = nn.Parameter(prompts.detach().to(next(backbone.parameters()).device, copy=True))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.modality = getattr(backbone, "modality", "image")
        self.num_features = backbone.num_features

    def train(self, mode: bool = True) -> "Prompted":
        super().train(mode)
        self.backbone.eval()  # a fixed function while only the prompts (and their dropout) train
        return self

    def forward(self, *inputs: Any) -> torch.Tensor:
        return self.backbone(*inputs, prompts=self.dropout(self.prompts))


class PromptTuningProtocol(FinetuneProtocol):
    """eval.py protocol=prompt_tuning: prompts and a linear head trained on the frozen backbone.

    Besides the fine-tuning metrics (`val/prompt_tuning_top1`, ...), the results give `trainable_params` (prompts
    and head), `prompt_params` and `backbone_params` (all of the frozen backbone's).
    """

    name = "prompt_tuning"

    def __init__(self, num_prompts: int = 20, depth: str = "shallow", dropout: float = 0.0, epochs: int = 50,
                 base_lr: float = 1e-2, lr: float | None = None, weight_decay: float = 0.0,
                 warmup_epochs: float = 5, label_smoothing: float = 0.1, clip_grad: float | None = None,
                 views: Sequence[dict[str, Any]] | None = None) -> None:
        super().__init__(epochs=epochs, base_lr=base_lr, lr=lr, weight_decay=weight_decay, layer_decay=1.0,
                         warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, clip_grad=clip_grad,
                         views=views)
        if isinstance(num_prompts, bool) or not isinstance(num_prompts, int) or num_prompts < 0:
            raise ConfigError(f"protocol.num_prompts must be a whole number of at least 0, got {num_prompts}")
        if depth not in DEPTHS:
            raise ConfigError(f"protocol.depth must be one of {', '.join(DEPTHS)}, got '{depth}'")
        if not 0 <= dropout < 1:
            raise ConfigError(f"protocol.dropout must be in [0, 1), got {dropout}")
        self.num_prompts = num_prompts
        self.depth = depth
        self.dropout = dropout

    def prepare(self, backbone: nn.Module, ctx: EvalContext) -> Classifier:
        prompts = init_prompts(backbone, self.num_prompts, self.depth, ctx.seed)
        return Classifier(Prompted(backbone, prompts, self.dropout), ctx.num_classes)

    def run(self, backbone: nn.Module, ctx: EvalContext) -> dict[str, float]:
        torch.manual_seed(ctx.seed)
        model = self.prepare(backbone, ctx)
        metrics = self.fit(model, ctx)  # layer_decay 1.0 (set in __init__): nothing in the backbone trains
        saved = {"adapter": str(self.save(model, ctx.adapter_dir))} if ctx.adapter_dir else {}
        return {**metrics, "prompt_params": model.backbone.prompts.numel(),
                "backbone_params": sum(p.numel() for p in backbone.parameters()), **saved}

    def save(self, model: Classifier, folder: Path) -> Path:
        """The trained prompts (K, N, D) and head in `folder/prompts.safetensors` (written beside it, then renamed
        into place), with the settings that place them (`depth`: shallow or deep) in its metadata: with the
        run's backbone, `backbone(inputs, prompts=...)` and the head give the evaluated classifier."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / PROMPTS_FILE
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tensors = {"prompts": model.backbone.prompts, "head.weight": model.head.weight, "head.bias": model.head.bias}
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"depth": self.depth, "num_prompts": str(self.num_prompts)})
        os.replace(tmp, path)
        return path
