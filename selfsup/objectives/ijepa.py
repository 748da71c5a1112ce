"""I-JEPA (Assran et al. 2023): from one context block of an image, a narrow predictor predicts the target encoder's
representations of four target blocks, at their positions. No augmentation beyond the crop; no pixels are
reconstructed.

- **Masks** (multi-block, after the official MaskCollator): per sample, 4 target blocks of scale 0.15-0.2 and
  aspect 0.75-1.5, and one context block of scale 0.85-1 (aspect 1) with every target patch removed from it; block
  sides are below the grid's (as the official code's). They are keyed by sample (keyed_random.py), so the same on
  any number of GPUs and after a resume. Differences from the official collator: each block draws its own size
  (it draws one target size and one context size per batch), a block may touch the last row and column (its
  placement leaves them out), and there is no minimum context size (a context left empty by its targets, about
  one sample in 20,000 on a 7 x 7 grid, attends to the class token only).
- **Fixed shapes.** Each target block lists `target slots` patch indices (the largest block the ranges allow),
  each context `context_slots` x N: a sample with more context patches keeps a random subset (the official code
  truncates every sample to the batch's smallest count), a sample with fewer is padded. Padding is masked out of
  attention and out of the loss, so the step has the same shapes every step and traces into one graph.
- **Context encoder**: the backbone on the context patches only. **Target encoder**: the backbone's EMA copy
  (objectives/ema.py, 0.996 -> 1 linearly, as the official code) on all patches, its patch outputs
  layer-normalised. **Predictor**: a narrow ViT on
  the context tokens plus one mask token per target position (each with its position), once per target block.
- **Loss**: the mean squared error between predictions and targets over the target patches (`loss=smooth_l1`: the
  official code's Huber loss).
- The backbone must pool by the mean of its patch tokens (`backbone.pool=mean`): no loss reads the class token's
  output (selfsup's ViT keeps one, which the patches may attend to; the official ViT has none).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from selfsup import keyed_random
from selfsup.backbones.pos_embed import sincos_2d
from selfsup.backbones.vit import attend_valid
from selfsup.errors import ConfigError
from selfsup.objectives.base import Objective, StepOutput
from selfsup.objectives.ema import EMATeacher
from selfsup.objectives.indexing import gather_rows

EVALUATED = ("teacher", "student")
LOSSES = ("l2", "smooth_l1")


def block_side_limits(grid: tuple[int, int], scale: tuple[float, float],
                      aspect: tuple[float, float]) -> tuple[int, int]:
    """The largest block height and width the scale and aspect ranges allow on `grid` (sides below the grid's)."""
    n = grid[0] * grid[1]
    h = round(math.sqrt(scale[1] * n * aspect[1]))
    w = round(math.sqrt(scale[1] * n / aspect[0]))
    return max(1, min(h, grid[0] - 1)), max(1, min(w, grid[1] - 1))


def rectangles(numbers: torch.Tensor, grid: tuple[int, int], scale: tuple[float, float],
               aspect: tuple[float, float]) -> torch.Tensor:
    """One block per row of `numbers` (B, 4: scale, aspect, top, left draws in [0, 1)) as a (B, N) mask: area
    scale x N with height / width = aspect, rounded, each side at most the grid's minus one, placed uniformly."""
    gh, gw = grid
    s = scale[0] + (scale[1] - scale[0]) * numbers[:, 0]
    a = aspect[0] + (aspect[1] - aspect[0]) * numbers[:, 1]
    area = s * gh * gw
    h = torch.round(torch.sqrt(area * a)).clamp(1, max(1, gh - 1))
    w = torch.round(torch.sqrt(area / a)).clamp(1, max(1, gw - 1))
    top = torch.floor(numbers[:, 2] * (gh - h + 1)).clamp_max(gh - h)
    left = torch.floor(numbers[:, 3] * (gw - w + 1)).clamp_max(gw - w)
    rows = torch.arange(gh, device=numbers.device)
    cols = torch.arange(gw, device=numbers.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :]).flatten(1)


def first_slots(mask: torch.Tensor, slots: int, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices (B, slots) of a mask's true entries, ordered by `order` (B, N) in [0, 1), then padding (false
    entries, `valid` false). Sorting instead of nonzero keeps the shape fixed."""
    rank = (~mask).float() + 0.5 * order
    index = rank.argsort(dim=1)[:, :slots]
    return index, mask.gather(1, index)


def multiblock_masks(numbers: torch.Tensor, grid: tuple[int, int], targets: int, target_scale: tuple[float, float],
                     target_aspect: tuple[float, float], context_scale: tuple[float, float], target_slots: int,
                     context_slots: int) -> dict[str, torch.Tensor]:
    """I-JEPA's masks from per-sample draws `numbers` (B, 4 x targets + 3 + N): target indices and validity
    (B, targets, target_slots) in raster order, and context indices and validity (B, context_slots), a random
    subset where the context has more patches than slots. No context patch is a target patch."""
    b = len(numbers)
    n = grid[0] * grid[1]
    blocks = numbers[:, : 4 * targets].reshape(b * targets, 4)
    target_masks = rectangles(blocks, grid, target_scale, target_aspect).view(b, targets, n)
    raster = (torch.arange(n, device=numbers.device) / n).expand(b * targets, n)
    target_index, target_valid = first_slots(target_masks.flatten(0, 1), target_slots, raster)
    at = 4 * targets
    square = torch.cat([numbers[:, at : at + 1], torch.zeros_like(numbers[:, :1]), numbers[:, at + 1 : at + 3]], 1)
    context = rectangles(square, grid, context_scale, (1.0, 1.0)) & ~target_masks.any(dim=1)
    context_index, context_valid = first_slots(context, context_slots, numbers[:, at + 3 : at + 3 + n])
    return {"target_index": target_index.view(b, targets, -1), "target_valid": target_valid.view(b, targets, -1),
            "context_index": context_index, "context_valid": context_valid}


class Predictor(nn.Module):
    """A narrow ViT: context tokens projected to `dim`, plus a learned mask token at each target position, both with
    2-D sin-cos positions; transformer blocks with padding masked out; the mask tokens' outputs projected back to
    the encoder's width."""

    def __init__(self, embed_dim: int, grid: tuple[int, int], dim: int = 96, depth: int = 4, heads: int = 3) -> None:
        super().__init__()
        if dim % heads or dim % 4:
            raise ConfigError(f"objective.predictor_dim ({dim}) must be divisible by objective.predictor_heads "
                              f"({heads}) and by 4 (its sin-cos positions)")
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        norm = functools.partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm)
                                      for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.project = nn.Linear(dim, embed_dim)
        self.register_buffer("positions", sincos_2d(dim, *grid), persistent=False)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, context: torch.Tensor, context_index: torch.Tensor, context_valid: torch.Tensor,
                target_index: torch.Tensor, target_valid: torch.Tensor) -> torch.Tensor:
        """context (B, C, D) at context_index (B, C); targets at target_index (B, T) -> predictions (B, T, D)."""
        x = self.embed(context) + self.positions[context_index]
        queries = self.mask_token + self.positions[target_index]
        x = torch.cat([x, queries.to(x.dtype)], dim=1)
        x = attend_valid(self.blocks, x, torch.cat([context_valid, target_valid], dim=1))
        return self.project(self.norm(x[:, context.shape[1]:]))


class IJEPA(Objective):
    """Context encoder (the backbone) -> predictor -> the EMA target encoder's layer-normalised patch features of the
    target blocks. `evaluate`: the encoder evaluation, the monitors and export use (the target encoder by
    default, as the paper evaluates)."""

    modality = "image"

    def __init__(self, backbone: nn.Module, views: list[dict[str, Any]], targets: int = 4,
                 target_scale: tuple[float, float] = (0.15, 0.2), target_aspect: tuple[float, float] = (0.75, 1.5),
                 context_scale: tuple[float, float] = (0.85, 1.0), context_slots: float = 0.4,
                 predictor_dim: int = 96, predictor_depth: int = 4, predictor_heads: int = 3,
                 base_momentum: float = 0.996, momentum_schedule: str = "linear", loss: str = "l2",
                 evaluate: str = "teacher") -> None:
        super().__init__(views)
        if not hasattr(backbone, "encode_patches"):
            raise ConfigError(f"objective=ijepa encodes the context patches only and needs a ViT backbone, got "
                              f"{type(backbone).__name__}; pick backbone=vit_tiny (or another vit_*)")
        if backbone.pool != "mean":
            raise ConfigError("objective=ijepa trains no class-token output, so its features are the mean of the "
                              f"patch tokens; set backbone.pool=mean (got {backbone.pool})")
        if len(self.views) != 1:
            raise ConfigError(f"I-JEPA needs exactly one view in objective.views, got {len(self.views)}")
        if targets < 1:
            raise ConfigError(f"objective.targets must be at least 1, got {targets}")
        ranges = {"target_scale": target_scale, "target_aspect": target_aspect, "context_scale": context_scale}
        for name, (lo, hi) in ranges.items():
            if not 0 < lo <= hi or (name != "target_aspect" and hi > 1):
                raise ConfigError(f"objective.{name} must be [low, high] with 0 < low <= high"
                                  f"{' <= 1' if name != 'target_aspect' else ''}, got {[lo, hi]}")
        if not 0 < context_slots <= 1:
            raise ConfigError(f"objective.context_slots must be a fraction of the patches in (0, 1], got "
                              f"{context_slots}")
        if loss not in LOSSES:
            raise ConfigError(f"objective.loss must be l2 or smooth_l1, got '{loss}'")
        if evaluate not in EVALUATED:
            raise ConfigError(f"objective.evaluate must be teacher or student, got '{evaluate}'")
        self.grid = tuple(backbone.grid)
        self.target_blocks = targets
        self.ranges = (tuple(target_scale), tuple(target_aspect), tuple(context_scale))
        h, w = block_side_limits(self.grid, tuple(target_scale), tuple(target_aspect))
        self.target_slots = h * w
        self.context_slots = max(1, round(context_slots * backbone.num_patches))
        self.loss = loss
        self.evaluate = evaluate
        self.predictor = Predictor(backbone.num_features, self.grid, predictor_dim, predictor_depth,
                                   predictor_heads)
        self.teacher = EMATeacher({"backbone": backbone}, base_momentum, schedule=momentum_schedule)

    def masks(self, batch: dict[str, Any], size: int, device: torch.device) -> dict[str, torch.Tensor]:
        n = self.grid[0] * self.grid[1]
        numbers = keyed_random.per_sample_uniform(batch.get("key"), size, 4 * self.target_blocks + 3 + n,
                                                  keyed_random.JEPA_MASK_STREAM, device)
        return multiblock_masks(numbers, self.grid, self.target_blocks, *self.ranges, self.target_slots,
                                self.context_slots)

    def eval_model(self, backbone: nn.Module) -> nn.Module:
        return self.teacher["backbone"] if self.evaluate == "teacher" else backbone

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> StepOutput:
        images = batch[self.views[0]["key"]]
        b = len(images)
        m = self.masks(batch, b, images.device)
        prefix = backbone.num_prefix
        patches = backbone.patchify(images)
        context = backbone.encode_patches(patches, keep=m["context_index"], key_valid=m["context_valid"])[:, prefix:]
        with torch.no_grad():
            tokens = self.teacher["backbone"].forward_tokens(images)
            target_features = F.layer_norm(tokens[:, prefix:].float(), (tokens.shape[-1],))
        k = self.target_blocks
        target_index = m["target_index"].flatten(0, 1)  # (B * targets, slots): block j of sample i at i * k + j
        target_valid = m["target_valid"].flatten(0, 1)
        repeat = lambda t: t.repeat_interleave(k, dim=0)  # noqa: E731
        predictions = self.predictor(repeat(context), repeat(m["context_index"]), repeat(m["context_valid"]),
                                     target_index, target_valid)
        targets = gather_rows(target_features, m["target_index"].reshape(b, -1)).view_as(predictions)
        if self.loss == "l2":
            error = (predictions.float() - targets).pow(2).mean(-1)
        else:
            error = F.smooth_l1_loss(predictions.float(), targets, reduction="none").mean(-1)
        weights = target_valid.float()
        loss = (error * weights).sum() / weights.sum().clamp_min(1)
        if self.evaluate == "teacher":
            features = self.teacher["backbone"].pool_tokens(tokens)
        else:  # the mean of the context encoder's real (unpadded) tokens
            valid = m["context_valid"].unsqueeze(-1).to(context.dtype)
            features = ((context * valid).sum(1) / valid.sum(1).clamp_min(1)).detach()
        metrics = {"context_patches": m["context_valid"].float().sum(1).mean(), "target_patches": weights.sum() / b}
        return StepOutput(loss, metrics, features=features)

    def step_metrics(self) -> dict[str, torch.Tensor]:
        return {"teacher_momentum": self.teacher.momentum}

    def after_optimizer_step(self, backbone: nn.Module, step: int, total_steps: int) -> None:
        self.teacher.update({"backbone": backbone}, step, total_steps)
