"""Masked autoencoder (He et al. 2022): reconstruct the pixels of randomly masked patches.

The encoder sees only the visible patches; a light decoder sees their encodings plus mask tokens at the
masked positions, with fixed 2-D sin-cos positions. The loss is the MSE on masked patches only, optionally
against per-patch normalised pixels (`norm_pix_loss`). The decoder's output head runs on the masked
positions only, since visible ones never enter the loss.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from selfsup import keyed_random
from selfsup.backbones.pos_embed import sincos_2d
from selfsup.errors import ConfigError
from selfsup.objectives.base import Objective, StepOutput
from selfsup.objectives.indexing import gather_rows


def random_masking(noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking with an exact count: each row keeps round(N * (1 - ratio)) patches.

    noise: (B, N) scores; the lowest are kept. Returns (keep, masked, restore): keep (B, n) and masked
    (B, N - n) patch indices, and restore (B, N), the inverse of the shuffle [keep, masked].
    """
    n = noise.shape[1]
    n_keep = num_visible(n, mask_ratio)
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    return shuffle[:, :n_keep], shuffle[:, n_keep:], restore


def num_visible(num_patches: int, mask_ratio: float) -> int:
    return int(num_patches * (1 - mask_ratio))


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch standardised pixels, the `norm_pix_loss` target (unbiased variance, as the official code)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def reconstruction_loss(pred_masked: torch.Tensor, patches: torch.Tensor, masked: torch.Tensor,
                        norm_pix: bool) -> torch.Tensor:
    """Mean squared error between predictions for the masked patches and their (normalised) pixels."""
    target = gather_rows(patches, masked)
    if norm_pix:
        target = normalize_patches(target)
    return F.mse_loss(pred_masked.float(), target.float())


class MAEDecoder(nn.Module):
    """Light transformer decoder: visible encodings + mask tokens -> pixels of each patch."""

    def __init__(self, encoder_dim: int, num_prefix: int, grid: tuple[int, int], patch_pixels: int,
                 dim: int = 512, depth: int = 8, heads: int = 16, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.num_prefix = num_prefix
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_2d(dim, *grid, num_prefix=num_prefix).unsqueeze(0), persistent=False)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, patch_pixels)
        self.apply(self._init)
        trunc_normal_(self.mask_token, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, latent: torch.Tensor, restore: torch.Tensor, predict: torch.Tensor | None) -> torch.Tensor:
        """latent (B, prefix + n, D_enc); restore (B, N); predict: patch indices to output, or None for all."""
        x = self.embed(latent)
        b, n_all = restore.shape
        prefix, visible = x[:, : self.num_prefix], x[:, self.num_prefix :]
        masks = self.mask_token.expand(b, n_all - visible.shape[1], -1)
        patches = gather_rows(torch.cat([visible, masks], dim=1), restore)
        # float32 tokens and positions promote the residual stream to float32 under bf16 autocast, as in the
        # encoder (timm) and the official MAE; only the matmuls run in bf16
        x = torch.cat([prefix, patches], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))[:, self.num_prefix :]
        if predict is not None:
            x = gather_rows(x, predict)
        return self.head(x)


class MAE(Objective):
    modality = ("image", "audio")  # images, or audio as log-mel spectrograms

    def __init__(self, backbone: nn.Module, mask_ratio: float = 0.75, decoder_dim: int = 512,
                 decoder_depth: int = 8, decoder_heads: int = 16, norm_pix_loss: bool = True,
                 views: list[dict[str, Any]] | None = None) -> None:
        super().__init__(views)
        if not 0.0 < mask_ratio < 1.0:
            raise ConfigError(f"objective.mask_ratio must lie in (0, 1), got {mask_ratio}; MAE's default is 0.75")
        if not hasattr(backbone, "encode_patches"):
            raise ConfigError(f"MAE needs a ViT backbone that can encode visible patches, got "
                              f"{type(backbone).__name__}")
        if num_visible(backbone.num_patches, mask_ratio) < 1:
            raise ConfigError(f"mask_ratio {mask_ratio} leaves no visible patch of {backbone.num_patches}; lower it")
        if decoder_dim % decoder_heads:
            raise ConfigError(f"objective.decoder_dim {decoder_dim} is not divisible by decoder_heads {decoder_heads}")
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        patch_pixels = backbone.patch_size ** 2 * backbone.in_chans
        self.decoder = MAEDecoder(backbone.embed_dim, backbone.num_prefix, backbone.grid, patch_pixels,
                                  decoder_dim, decoder_depth, decoder_heads)

    def mask_noise(self, batch: dict[str, Any], num_patches: int) -> torch.Tensor:
        """Per-sample noise keyed by the sample (reproducible across resume and DDP), else torch.rand."""
        images = batch["image"]
        return keyed_random.per_sample_uniform(batch.get("key"), len(images), num_patches,
                                               keyed_random.PATCH_MASK_STREAM, images.device)

    def forward(self, backbone: nn.Module, batch: dict[str, Any]) -> StepOutput:
        patches = backbone.patchify(batch["image"])
        keep, masked, restore = random_masking(self.mask_noise(batch, patches.shape[1]), self.mask_ratio)
        latent = backbone.encode_patches(patches, keep)
        pred = self.decoder(latent, restore, predict=masked)
        loss = reconstruction_loss(pred, patches, masked, self.norm_pix_loss)
        # The visible tokens' pooled encoding: what the online probe sees, at no extra cost.
        return StepOutput(loss, {}, features=backbone.pool_tokens(latent).detach())

    @torch.no_grad()
    def reconstruct(self, backbone: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked images, reconstructions), in the input's normalised pixel space; visible patches pasted in."""
        patches = backbone.patchify(batch["image"])
        keep, masked, restore = random_masking(self.mask_noise(batch, patches.shape[1]), self.mask_ratio)
        pred = self.decoder(backbone.encode_patches(patches, keep), restore, predict=None).float()
        if self.norm_pix_loss:  # undo the per-patch normalisation with the true patch statistics
            mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
            pred = pred * (var + 1e-6).sqrt() + mean
        is_masked = torch.zeros(patches.shape[:2], device=patches.device, dtype=torch.bool)
        is_masked.scatter_(1, masked, True)
        is_masked = is_masked.unsqueeze(-1)
        masked_view = patches.masked_fill(is_masked, 0.0)
        recon = torch.where(is_masked, pred, patches.float())
        return backbone.unpatchify(masked_view), backbone.unpatchify(recon)

    @torch.no_grad()
    def visualize(self, backbone: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Rows of original | masked | reconstruction, for up to 8 images, min-max scaled per image; spectrograms
        with their low frequencies at the bottom, as they are drawn."""
        masked, recon = self.reconstruct(backbone, batch)
        original = batch["image"].float()
        rows = torch.stack([original, masked.to(original.dtype), recon.to(original.dtype)], dim=1)[:8]
        if getattr(backbone, "modality", "image") == "audio":  # mel bin 0 is the lowest
            rows = rows.flip(-2)
        flat = rows.flatten(2)
        lo, hi = flat[:, :1].amin(-1, keepdim=True), flat[:, :1].amax(-1, keepdim=True)
        rows = ((flat - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1).view_as(rows)
        b, three, c, h, w = rows.shape
        grid = rows.permute(2, 0, 3, 1, 4).reshape(c, b * h, three * w)
        return grid.expand(3, -1, -1) if c == 1 else grid[:3]
