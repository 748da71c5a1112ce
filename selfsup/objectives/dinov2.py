"""DINOv2 (Oquab et al. 2023): DINO's image-level self-distillation plus iBOT's patch-level loss (Zhou et al.
2022) and the KoLeo regulariser, with Sinkhorn-Knopp centring of the teacher by default.

The student sees its global crops with random blocks of patches replaced by a learned mask token, and learns to
give, at those positions, the patch-level distribution the (unmasked) teacher gives. Masks are keyed by the sample
(selfsup/keyed_random.py), so they do not depend on the process count or the resume point; and they have fixed
shapes: every masked crop lists `max ratio x N` patch slots, the unused ones weighted 0, so the step traces into
one graph (the price: the patch head also runs on the padding slots).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import keyed_random
from selfsup.errors import ConfigError
from selfsup.objectives.base import StepOutput
from selfsup.objectives.centering import Centering
from selfsup.objectives.dino import DINO, GLOBAL_VIEWS, DINOHead, dino_loss, distribution_health, same_size_runs

MIN_BLOCK_PATCHES = 4  # the smallest block, in patches (DINOv2's MaskingGenerator)
BLOCK_ASPECT = (0.3, 1 / 0.3)  # block height / width, drawn log-uniformly
BLOCKS_PER_MASK = 8  # blocks drawn per masked crop; the remaining count is filled at random


def block_masks(noise: torch.Tensor, grid: tuple[int, int], probability: float, ratio: tuple[float, float],
                slots: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """iBOT's block masks from per-crop U[0, 1) numbers `noise` (B, 2 + 4 x BLOCKS_PER_MASK + N).

    A crop is masked with `probability`; a masked crop masks exactly round(r x N) of its N patches, r ~ U(ratio):
    the patches of random blocks (area U[4, max(4, count)] patches, log-uniform aspect in 0.3-3.3) in the order
    they were drawn, the last block cut short in row-major order, then random patches if the blocks cover too
    few. Returns `masked` (B, N) bool, the masked patch indices padded to `slots` (B, slots) and their validity
    (B, slots) bool.
    """
    b = noise.shape[0]
    gh, gw = grid
    n = gh * gw
    drawn, r = noise[:, 0], noise[:, 1]
    count = torch.floor((ratio[0] + (ratio[1] - ratio[0]) * r) * n + 0.5) * (drawn < probability)
    blocks = noise[:, 2 : 2 + 4 * BLOCKS_PER_MASK].reshape(b, BLOCKS_PER_MASK, 4)
    area = MIN_BLOCK_PATCHES + (count.clamp_min(MIN_BLOCK_PATCHES) - MIN_BLOCK_PATCHES).unsqueeze(1) * blocks[..., 0]
    log_lo, log_hi = math.log(BLOCK_ASPECT[0]), math.log(BLOCK_ASPECT[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * blocks[..., 1])
    h = torch.round(torch.sqrt(area * aspect)).clamp(1, gh)
    w = torch.round(torch.sqrt(area / aspect)).clamp(1, gw)
    top = torch.floor(blocks[..., 2] * (gh - h + 1))
    left = torch.floor(blocks[..., 3] * (gw - w + 1))
    rows = torch.arange(gh, device=noise.device).repeat_interleave(gw).float()  # (N,) row of each patch
    cols = torch.arange(gw, device=noise.device).repeat(gh).float()
    inside = ((rows >= top.unsqueeze(-1)) & (rows < (top + h).unsqueeze(-1))
              & (cols >= left.unsqueeze(-1)) & (cols < (left + w).unsqueeze(-1)))  # (B, blocks, N)
    order = torch.arange(BLOCKS_PER_MASK, device=noise.device).float().view(1, -1, 1)
    first_block = torch.where(inside, order, float(BLOCKS_PER_MASK)).amin(dim=1)  # (B, N)
    index = torch.arange(n, device=noise.device).float() / n
    fill = noise[:, 2 + 4 * BLOCKS_PER_MASK :]
    priority = first_block + torch.where(first_block < BLOCKS_PER_MASK, index, fill)
    ranked = priority.argsort(dim=1)
    valid = torch.arange(slots, device=noise.device) < count.unsqueeze(1)
    indices = ranked[:, :slots]
    masked = torch.zeros(b, n, dtype=torch.bool, device=noise.device).scatter(1, indices, valid)
    return masked, indices, valid


def ibot_loss(student: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Cross-entropy between the teacher's targets and the student's softmax at the masked slots (B, S, K),
    each crop's patches weighted 1 / its masked count, summed and divided by the number of crops B (DINOv2's
    weighting: an unmasked crop counts in the mean with 0); in float32."""
    log_probs = F.log_softmax(student.float() / student_temp, dim=-1)
    per_slot = -(targets * log_probs).sum(-1)
    weights = valid.float() / valid.sum(dim=1, keepdim=True).clamp_min(1)
    return (per_slot * weights).sum() / len(valid)


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimate (Sablayrolles et al. 2019), as DINOv2 regularises its class tokens:
    minus the mean log distance of each L2-normalised row to its nearest other row; in float32."""
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        similarity = (x @ x.T).masked_fill(torch.eye(len(x), dtype=torch.bool, device=x.device), -2.0)
        nearest = similarity.argmax(dim=1)
    distances = (x - x[nearest] + eps).norm(dim=-1)  # as torch's PairwiseDistance
    return -torch.log(distances + eps).mean()


class DINOv2(DINO):
    """DINO's loss on the class tokens, plus `ibot_weight` x iBOT on the masked patches of the student's global
    crops and `koleo_weight` x KoLeo on its global class tokens (summed over the two crops, as DINOv2).

    Masks (`mask_probability` of the crops, ratio `mask_ratio`): see block_masks. The patch tokens go through a
    patch head of their own (`separate_patch_head`, `patch_out_dim` prototypes) or DINO's; each has its own
    centring (`centering`, Sinkhorn-Knopp by default), and both heads' prototypes are held still for
    `freeze_last_layer_epochs`. Needs a ViT backbone (patch tokens and a mask token); other arguments: DINO's.
    """

    def __init__(self, backbone: nn.Module, views: list[dict[str, Any]], out_dim: int = 65536,
                 patch_out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 separate_patch_head: bool = True, mask_probability: float = 0.5,
                 mask_ratio: tuple[float, float] = (0.1, 0.5), ibot_weight: float = 1.0, koleo_weight: float = 0.1,
                 centering: str = "sinkhorn_knopp", center_momentum: float = 0.9, sinkhorn_iterations: int = 3,
                 **dino: Any) -> None:
        if not hasattr(backbone, "forward_tokens"):
            raise ConfigError(f"objective=dinov2 masks patch tokens and needs a ViT backbone, got "
                              f"{type(backbone).__name__}; pick backbone=vit_tiny_reg4 (or another vit_*), or "
                              "objective=dino for ResNets")
        super().__init__(backbone, views, out_dim=out_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim,
                         centering=centering, center_momentum=center_momentum,
                         sinkhorn_iterations=sinkhorn_iterations, **dino)
        if not 0 <= mask_probability <= 1:
            raise ConfigError(f"objective.mask_probability must be in [0, 1], got {mask_probability}")
        lo, hi = (float(r) for r in mask_ratio)
        if not 0 <= lo <= hi < 1:
            raise ConfigError(f"objective.mask_ratio must be [low, high] with 0 <= low <= high < 1, got "
                              f"{list(mask_ratio)}")
        for name, value in (("ibot_weight", ibot_weight), ("koleo_weight", koleo_weight)):
            if value < 0:
                raise ConfigError(f"objective.{name} must be at least 0, got {value}")
        self.mask_probability = mask_probability
        self.mask_ratio = (lo, hi)
        self.ibot_weight = ibot_weight
        self.koleo_weight = koleo_weight
        self.mask_token = nn.Parameter(torch.zeros(backbone.num_features))
        self.patch_key = "patch_head" if separate_patch_head else "head"
        if separate_patch_head:
            self.patch_head = DINOHead(backbone.num_features, patch_out_dim, hidden_dim, bottleneck_dim)
            self.teacher.follow("patch_head", self.patch_head)
        else:
            self.patch_head = self.head
            patch_out_dim = out_dim
        self.patch_centering = Centering(centering, patch_out_dim, center_momentum, sinkhorn_iterations)

    def students(self, backbone: nn.Module) -> dict[str, nn.Module]:
        return {**super().students(backbone), self.patch_key: self.patch_head}

    def frozen_parameters(self, step: int) -> list[nn.Parameter]:
        frozen = super().frozen_parameters(step)
        return frozen + [self.patch_head.prototypes] if frozen and self.patch_key == "patch_head" else frozen

    def masks(self, batch: dict[str, Any], size: int, grid: tuple[int, int],
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Block masks of the global crops of `size` samples, view by view (cat order), keyed by (sample, view)
        where the batch has keys."""
        n = grid[0] * grid[1]
        slots = math.floor(self.mask_ratio[1] * n + 0.5)
        numbers = 2 + 4 * BLOCKS_PER_MASK + n
        keys = batch.get("key")
        noise = torch.cat([keyed_random.per_sample_uniform(
            None if keys is None else keyed_random.combine(keys.to(device), view), size, numbers,
            keyed_random.BLOCK_MASK_STREAM, device) for view in range(GLOBAL_VIEWS)])
        return block_masks(noise, grid, self.mask_probability, self.mask_ratio, slots)

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> StepOutput:
        views = [batch[v["key"]] for v in self.views]
        global_crops = torch.cat(views[:GLOBAL_VIEWS])
        patch = backbone.patch_size
        grid = (global_crops.shape[-2] // patch, global_crops.shape[-1] // patch)
        masked, slots, valid = self.masks(batch, len(views[0]), grid, global_crops.device)
        prefix = backbone.num_prefix
        tokens = backbone.forward_tokens(global_crops, masked=masked, mask_token=self.mask_token)
        student_cls = backbone.pool_tokens(tokens)
        student = list(self.head(student_cls).chunk(GLOBAL_VIEWS))
        for group in same_size_runs(views[GLOBAL_VIEWS:]):  # the local crops, one pass per size, unmasked
            student.extend(self.head(backbone(torch.cat(group))).chunk(len(group)))
        student_patches = self.patch_head(gather_slots(tokens[:, prefix:], slots))
        with torch.no_grad():
            teacher_tokens = self.teacher["backbone"].forward_tokens(global_crops)
            features = self.teacher["backbone"].pool_tokens(teacher_tokens)
            teacher = self.teacher["head"](features)
            teacher_patches = self.teacher[self.patch_key](gather_slots(teacher_tokens[:, prefix:], slots))
        flat_valid = valid.flatten()
        targets = self.centering.targets(teacher, self.teacher_temp)
        patch_targets = self.patch_centering.targets(teacher_patches.flatten(0, 1), self.teacher_temp, flat_valid)
        dino = dino_loss(student, list(targets.chunk(GLOBAL_VIEWS)), self.student_temp)
        ibot = ibot_loss(student_patches, patch_targets.view_as(teacher_patches), valid, self.student_temp)
        koleo = sum(koleo_loss(c) for c in student_cls.chunk(GLOBAL_VIEWS))
        loss = dino + self.ibot_weight * ibot + self.koleo_weight * koleo
        if self.training:
            self.centering.update(teacher)
            self.patch_centering.update(teacher_patches.flatten(0, 1), flat_valid)
        evaluated = features if self.evaluate == "teacher" else student_cls.detach()
        first, second = evaluated.chunk(GLOBAL_VIEWS)
        metrics = {"dino_loss": dino.detach(), "ibot_loss": ibot.detach(), "koleo_loss": koleo.detach(),
                   "masked_ratio": masked.float().mean(), **distribution_health(targets)}
        return StepOutput(loss, metrics, features=first, second_features=second)


def gather_slots(patch_tokens: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """(B, N, D) patch tokens at the slot indices (B, S) -> (B, S, D)."""
    return torch.gather(patch_tokens, 1, slots.unsqueeze(-1).expand(-1, -1, patch_tokens.shape[-1]))
