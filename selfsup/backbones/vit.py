"""Vision Transformer backbone: any timm ViT by name, able to encode only a subset of its patches.

Encoding a subset is what makes MAE cheap: the patches are cut from the image and gathered before the
patch projection, so masked patches cost neither the projection nor any transformer block.
"""
from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from selfsup.backbones.pos_embed import sincos_2d
from selfsup.backbones.prompts import insert_prompts, prompted_blocks
from selfsup.errors import ConfigError

PATCH_CHOICES = (16, 8, 4, 2)
MIN_PATCHES_PER_SIDE = 7
MIN_PATCHES_FALLBACK = 4  # short sides (few mel bins) that no patch divides into 7: the next best grid


def as_pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(height, width) of an image size given as one side (square) or a pair (spectrograms: mel bins x frames)."""
    if isinstance(size, int):
        return size, size
    pair = tuple(int(s) for s in size)  # OmegaConf gives a ListConfig
    if len(pair) != 2:
        raise ConfigError(f"an image size is one number or a pair (height, width), got {list(size)}")
    return pair


def auto_patch_size(img_size: int | tuple[int, int]) -> int:
    """The largest of 16, 8, 4, 2 that divides both sides and leaves at least 7 patches on the shorter one (else 4).

    224 px -> 16 (14x14), 96 -> 8 (12x12), 32 -> 4 (8x8), 28 -> 4 (7x7): the grids SSL papers use;
    64 x 128 (mel bins x frames) -> 8 (8x16), 128 x 1024 -> 16 (8x64).
    """
    h, w = as_pair(img_size)
    dividing = [p for p in PATCH_CHOICES if h % p == 0 and w % p == 0]
    for least in (MIN_PATCHES_PER_SIDE, MIN_PATCHES_FALLBACK):
        for p in dividing:
            if min(h, w) // p >= least:
                return p
    raise ConfigError(f"no patch size in {PATCH_CHOICES} fits image size {img_size}; set backbone.patch_size")


def attend_valid(blocks: nn.Sequential, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """timm blocks on tokens (B, T, D) whose last key_valid.shape[1] tokens are attended to only where `key_valid`
    (B, n) is true (the tokens before them always). The mask is additive (0 / -inf), which every timm attention
    path and autocast take."""
    mask = valid_keys_mask(x, key_valid)
    for block in blocks:
        x = block(x, attn_mask=mask)
    return x


def valid_keys_mask(x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """attend_valid's additive mask (B, 1, 1, T) for tokens x (B, T, D)."""
    prefix = x.shape[1] - key_valid.shape[1]
    valid = torch.cat([key_valid.new_ones(len(x), prefix), key_valid], dim=1)
    mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device).masked_fill(~valid, float("-inf"))
    return mask[:, None, None, :]  # (B, heads, queries, keys) by broadcasting


class ViT(nn.Module):
    """A timm VisionTransformer with patch-level access: patchify, encode a subset, pool."""

    modality = "image"

    def __init__(
        self,
        name: str = "vit_small_patch16_224",
        img_size: int | tuple[int, int] = 224,
        patch_size: int | str = "auto",
        in_chans: int = 3,
        pos_embed: str = "sincos",
        pool: str = "cls",
        drop_path_rate: float = 0.0,
        registers: int = 0,
        layer_scale: float | None = None,
        freeze_patch_embed: bool = False,
        **timm_kwargs,
    ) -> None:
        """`registers`: extra learned tokens after [CLS] (Darcet et al. 2024, as DINOv2 uses; timm's reg_tokens);
        `layer_scale`: the initial value of per-channel residual scales (CaiT, DINOv2: 1e-5; timm's
        init_values); `drop_path_rate`: stochastic depth; `freeze_patch_embed`: the patch projection keeps its random
        initial weights (MoCo v3's ViT recipe, which it found to stabilise training). `img_size`: one side, or
        (height, width) for non-square inputs (spectrograms)."""
        super().__init__()
        if not isinstance(img_size, int):
            img_size = as_pair(img_size)
        height, width = as_pair(img_size)
        if not timm.is_model(name):
            raise ConfigError(f"unknown timm model '{name}' for backbone.name; list ViTs with "
                              "timm.list_models('vit_*')")
        patch = auto_patch_size(img_size) if patch_size == "auto" else int(patch_size)
        if height % patch or width % patch:
            raise ConfigError(
                f"image size {img_size} is not divisible by patch size {patch}; "
                f"set backbone.patch_size to a divisor of {img_size} (or 'auto')"
            )
        if pos_embed not in ("sincos", "learned"):
            raise ConfigError(f"backbone.pos_embed must be 'sincos' or 'learned', got '{pos_embed}'")
        if isinstance(registers, bool) or not isinstance(registers, int) or registers < 0:
            raise ConfigError(f"backbone.registers must be a whole number of at least 0, got {registers}")
        if layer_scale is not None and not layer_scale > 0:
            raise ConfigError(f"backbone.layer_scale must be positive (DINOv2: 1e-5) or null (none), got {layer_scale}")
        if not 0 <= drop_path_rate < 1:
            raise ConfigError(f"backbone.drop_path_rate must be in [0, 1), got {drop_path_rate}")
        if registers:
            timm_kwargs["reg_tokens"] = registers
        if layer_scale is not None:
            timm_kwargs["init_values"] = layer_scale
        if pool not in ("cls", "mean"):
            raise ConfigError(f"backbone.pool must be 'cls' or 'mean', got '{pool}'")
        not_vit = ConfigError(f"timm model '{name}' is not a VisionTransformer; pick a 'vit_*' model for backbone.name")
        # fc_norm=False: every token is normalised by the final norm (as MAE and DINO use ViTs), also for the timm
        # models whose default pools first and normalises after (the `gap` ones); exports say the same to timm.
        timm_kwargs.setdefault("fc_norm", False)
        try:
            self.vit = timm.create_model(
                name, pretrained=False, img_size=img_size, patch_size=patch, in_chans=in_chans,
                num_classes=0, drop_path_rate=drop_path_rate, class_token=True, **timm_kwargs,
            )
        except TypeError as e:  # a model class that takes no img_size / patch_size
            raise not_vit from e
        if not isinstance(self.vit, VisionTransformer):
            raise not_vit
        if hasattr(self.vit.patch_embed, "backbone"):
            raise ConfigError(f"timm model '{name}' is a hybrid ViT (a CNN stem makes its patches), and selfsup's ViT "
                              "cuts patches from the image itself (MAE encodes only the visible ones); pick a plain "
                              "ViT for backbone.name, e.g. vit_small_patch16_224")
        self.name = name
        self.img_size = img_size
        self.patch_size = patch
        self.in_chans = in_chans
        self.pool = pool
        self.registers = registers
        self.layer_scale = layer_scale
        self.grid = (height // patch, width // patch)
        self.num_patches = self.grid[0] * self.grid[1]
        self.embed_dim = self.vit.embed_dim
        self.num_prefix = self.vit.num_prefix_tokens
        if pos_embed == "sincos":
            prefix = 0 if self.vit.no_embed_class else self.num_prefix
            table = sincos_2d(self.embed_dim, *self.grid, num_prefix=prefix)
            self.vit.pos_embed.data.copy_(table.unsqueeze(0))
            self.vit.pos_embed.requires_grad_(False)
        if freeze_patch_embed:
            self.vit.patch_embed.requires_grad_(False)

    @property
    def num_features(self) -> int:
        return self.embed_dim

    def no_weight_decay(self) -> set[str]:
        return {f"vit.{n}" for n in self.vit.no_weight_decay()}

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, p*p*C), patches in row-major order, pixels in (row, col, channel) order."""
        b, c, h, w = images.shape
        p = self.patch_size
        x = images.reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of `patchify`."""
        b = patches.shape[0]
        p, (gh, gw), c = self.patch_size, self.grid, self.in_chans
        x = patches.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, gh * p, gw * p)

    def _project(self, patches: torch.Tensor) -> torch.Tensor:
        """The patch embedding as a linear map on patchified pixels (same weights as timm's conv)."""
        conv = self.vit.patch_embed.proj
        weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)
        return self.vit.patch_embed.norm(F.linear(patches, weight, conv.bias))

    def positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """The position table for a grid of patches: the model's own at its image size; for other sizes (multi-crop
        views) the 2-D sin-cos table of that grid, or the learned table resampled to it (bicubic, as timm and
        DINO do)."""
        vit = self.vit
        if tuple(grid) == self.grid:
            return vit.pos_embed
        prefix = 0 if vit.no_embed_class else self.num_prefix
        if not vit.pos_embed.requires_grad:  # sincos: the same function of the position at any grid
            table = sincos_2d(self.embed_dim, *grid, num_prefix=prefix).unsqueeze(0)
            return table.to(device=vit.pos_embed.device, dtype=vit.pos_embed.dtype)
        return resample_abs_pos_embed(vit.pos_embed, new_size=list(grid), old_size=list(self.grid),
                                      num_prefix_tokens=prefix)

    def encode_patches(self, patches: torch.Tensor, keep: torch.Tensor | None = None,
                       grid: tuple[int, int] | None = None, masked: torch.Tensor | None = None,
                       mask_token: torch.Tensor | None = None, key_valid: torch.Tensor | None = None,
                       prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Encode patches (B, N, p*p*C) of a `grid` (the model's by default), or only those at indices `keep`
        (B, n). `masked` (B, N) bool: those patches' embeddings become `mask_token` (D,) before the position
        is added (iBOT and DINOv2's masked student). `key_valid` (B, n) bool: only these patches (and the prefix
        tokens) are attended to, the others are padding (I-JEPA's context, a different count per sample in a
        fixed-shape batch). `prompts` (K, P, D): learned tokens after the prefix, K = 1 (shallow) or one set per
        block (deep), attended to but not returned (backbones/prompts.py). Returns (B, prefix + n, D)."""
        vit = self.vit
        b = patches.shape[0]
        pos = self.positions(grid or self.grid)
        prefix_pos = None if vit.no_embed_class else pos[:, : self.num_prefix]
        patch_pos = pos if vit.no_embed_class else pos[:, self.num_prefix :]
        if keep is not None:
            patches = torch.gather(patches, 1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
            patch_pos = torch.gather(patch_pos.expand(b, -1, -1), 1, keep.unsqueeze(-1).expand(-1, -1, self.embed_dim))
        x = self._project(patches)
        if masked is not None:
            x = torch.where(masked.unsqueeze(-1), mask_token.to(x.dtype), x)
        x = x + patch_pos
        prefix = [t.expand(b, -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
        if prefix:
            prefix = torch.cat(prefix, dim=1)
            if prefix_pos is not None:
                prefix = prefix + prefix_pos
            x = torch.cat([prefix.to(x.dtype), x], dim=1)
        if prompts is not None:
            x = insert_prompts(x, prompts[0], self.num_prefix)
        x = vit.norm_pre(vit.pos_drop(x))
        if prompts is not None:
            mask = None if key_valid is None else valid_keys_mask(x, key_valid)
            x = prompted_blocks(vit.blocks, x, prompts, self.num_prefix, lambda block, t: block(t, attn_mask=mask))
        elif key_valid is None:
            x = vit.blocks(x)
        else:
            x = attend_valid(vit.blocks, x, key_valid)
        return vit.norm(x)

    def forward_tokens(self, images: torch.Tensor, masked: torch.Tensor | None = None,
                       mask_token: torch.Tensor | None = None, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """All tokens of full images, of the model's size or any other multiple of the patch: (B, prefix + N, D);
        `masked` patches replaced by `mask_token`, `prompts` attended to (see encode_patches)."""
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ConfigError(f"images of {h} x {w} px do not divide into patches of {self.patch_size} px; give views "
                              f"a size that is a multiple of {self.patch_size}")
        return self.encode_patches(self.patchify(images), grid=(h // self.patch_size, w // self.patch_size),
                                   masked=masked, mask_token=mask_token, prompts=prompts)

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, D): the class token, or the mean of the patch tokens."""
        return tokens[:, 0] if self.pool == "cls" else tokens[:, self.num_prefix :].mean(dim=1)

    def forward(self, images: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Image features (B, D), pooled as configured: what probes, kNN and embedding export use. `prompts`
        (K, P, D): visual prompt tuning's tokens (encode_patches); pooling never reads them."""
        return self.pool_tokens(self.forward_tokens(images, prompts=prompts))
