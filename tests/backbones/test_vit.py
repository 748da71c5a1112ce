"""The ViT backbone: timm's forward, patches in and out, MAE's visible-patch encoder, fused attention,
the automatic patch size."""
from __future__ import annotations

import pytest
import torch
from helpers import tiny_vit
from helpers import tiny_vit_and_mae as tiny

from selfsup.backbones.vit import ViT, auto_patch_size
from selfsup.errors import ConfigError


def test_encoder_sees_only_visible_patches():
    vit = tiny_vit()
    patches = vit.patchify(torch.randn(2, 1, 28, 28))
    keep = torch.stack([torch.randperm(49)[:12] for _ in range(2)])
    tokens = vit.encode_patches(patches, keep)
    assert tokens.shape == (2, 1 + 12, vit.embed_dim)
    # the encoding of the kept patches does not depend on the masked ones
    other = patches.clone()
    masked_rows = torch.ones(2, 49, dtype=torch.bool)
    masked_rows[torch.arange(2).unsqueeze(1), keep] = False
    other[masked_rows] = torch.randn_like(other[masked_rows])
    torch.testing.assert_close(vit.encode_patches(other, keep), tokens)


def test_full_forward_matches_timm():
    vit = tiny_vit(img_size=32, in_chans=3).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(vit.forward_tokens(x), vit.vit.forward_features(x))
    torch.testing.assert_close(vit.unpatchify(vit.patchify(x)), x)


def test_attention_is_fused():
    vit, mae = tiny()
    assert all(block.attn.fused_attn for block in vit.vit.blocks)
    assert all(block.attn.fused_attn for block in mae.decoder.blocks)


@pytest.mark.parametrize("size,patch", [(224, 16), (96, 8), (64, 8), (32, 4), (28, 4)])
def test_auto_patch_size(size, patch):
    assert auto_patch_size(size) == patch


def test_unknown_timm_model_and_non_vit_are_refused():
    with pytest.raises(ConfigError, match="unknown timm model"):
        ViT("vit_does_not_exist", img_size=32)
    with pytest.raises(ConfigError, match="not a VisionTransformer"):
        ViT("resnet18", img_size=32)


@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
def test_vit_takes_images_of_another_size_with_their_own_position_table(pos_embed):
    """Multi-crop: a 12 px view of a 28 px model gets the sin-cos table of its 3 x 3 grid (or the learned table
    resampled to it); the model's own size is unchanged."""
    from selfsup.backbones.pos_embed import sincos_2d

    torch.manual_seed(0)
    vit = ViT("vit_tiny_patch16_224", img_size=28, patch_size=4, in_chans=1, pos_embed=pos_embed, depth=1)
    assert vit.positions((7, 7)) is vit.vit.pos_embed
    small = vit.positions((3, 3))
    assert small.shape == (1, 1 + 9, vit.embed_dim)
    if pos_embed == "sincos":
        torch.testing.assert_close(small, sincos_2d(vit.embed_dim, 3, 3, num_prefix=1).unsqueeze(0))
    assert vit(torch.randn(2, 1, 12, 12)).shape == (2, vit.embed_dim)
    with pytest.raises(ConfigError, match="do not divide into patches of 4 px"):
        vit(torch.randn(2, 1, 10, 10))


def test_registers_and_layer_scale_are_timms_and_the_class_token_still_pools():
    torch.manual_seed(1)
    vit = ViT("vit_tiny_patch16_224", img_size=28, patch_size=4, in_chans=1, depth=2, registers=4,
              layer_scale=1e-5, pos_embed="learned").eval()
    assert vit.num_prefix == 5 and vit.vit.reg_token.shape == (1, 4, vit.embed_dim)
    assert float(vit.vit.blocks[0].ls1.gamma.detach().abs().max()) == pytest.approx(1e-5)
    x = torch.randn(2, 1, 28, 28)
    tokens = vit.forward_tokens(x)
    assert tokens.shape == (2, 5 + 49, vit.embed_dim)
    torch.testing.assert_close(tokens, vit.vit.forward_features(x))
    torch.testing.assert_close(vit(x), tokens[:, 0])
    with pytest.raises(ConfigError, match="backbone.registers"):
        ViT("vit_tiny_patch16_224", img_size=28, registers=-1)


def test_masked_patches_become_the_mask_token_before_the_position():
    """Every patch masked: the tokens no longer depend on the image; none masked: the plain forward."""
    torch.manual_seed(2)
    vit = ViT("vit_tiny_patch16_224", img_size=28, patch_size=4, in_chans=1, depth=1).eval()
    token = torch.randn(vit.embed_dim)
    a, b = torch.randn(2, 1, 28, 28), torch.randn(2, 1, 28, 28)
    every = torch.ones(2, 49, dtype=torch.bool)
    torch.testing.assert_close(vit.forward_tokens(a, every, token), vit.forward_tokens(b, every, token))
    torch.testing.assert_close(vit.forward_tokens(a, ~every, token), vit.forward_tokens(a))
