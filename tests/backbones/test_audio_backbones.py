"""Audio backbones on log-mel spectrograms (B, 1, n_mels, frames): the ViT's rectangular patch grid, AudioViT under
MAE, and PANNs' CNN14 (its shape, its parameter count, its limits)."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from selfsup.backbones.audio_vit import AudioViT
from selfsup.backbones.cnn14 import CNN14
from selfsup.backbones.vit import ViT, auto_patch_size
from selfsup.errors import ConfigError
from selfsup.objectives.mae import MAE, num_visible

MEL = (2, 1, 64, 128)  # the CPU default: 64 mel bins x 1.28 s at a 10 ms hop


def tiny_audio_vit(**kwargs) -> AudioViT:
    """A one-block ViT-Tiny on 64 x 128 spectrograms (patch 8: an 8 x 16 grid)."""
    return AudioViT("vit_tiny_patch16_224", depth=1, **kwargs)


def test_non_square_grid_round_trips_and_matches_timm():
    torch.manual_seed(0)
    vit = tiny_audio_vit().eval()
    assert vit.img_size == (64, 128) and vit.patch_size == 8 and vit.grid == (8, 16) and vit.num_patches == 128
    x = torch.randn(MEL)
    patches = vit.patchify(x)
    assert patches.shape == (2, 128, 8 * 8)
    torch.testing.assert_close(vit.unpatchify(patches), x)
    # row-major over the grid: patch 16 is the first of the second row of patches (mel bins 8-15)
    torch.testing.assert_close(patches[:, 16], x[:, 0, 8:16, :8].reshape(2, -1))
    torch.testing.assert_close(vit.forward_tokens(x), vit.vit.forward_features(x))


def test_vit_takes_a_pair_and_keeps_an_int_image_size_as_given():
    pair = ViT("vit_tiny_patch16_224", img_size=OmegaConf.create([64, 128]), in_chans=1, depth=1)
    assert pair.img_size == (64, 128) and pair.grid == (8, 16)
    square = ViT("vit_tiny_patch16_224", img_size=32, in_chans=1, depth=1)
    assert square.img_size == 32 and square.grid == (8, 8)
    with pytest.raises(ConfigError, match="not divisible by patch size 8"):
        ViT("vit_tiny_patch16_224", img_size=(64, 100), patch_size=8, in_chans=1, depth=1)


@pytest.mark.parametrize("size,patch", [((64, 128), 8), ((128, 1024), 16), ([40, 100], 4), ((224, 224), 16),
                                        ((12, 64), 2)])
def test_auto_patch_size_on_pairs(size, patch):
    """>= 7 patches on the shorter side; else >= 4 (12 mel bins: 2 px patches, 6 of them)."""
    assert auto_patch_size(size) == patch


@pytest.mark.parametrize("size", [(6, 64), (64, 127)])
def test_auto_patch_size_refuses_pairs_that_nothing_fits(size):
    with pytest.raises(ConfigError, match="backbone.patch_size"):
        auto_patch_size(size)


def test_audio_vit_features_and_the_data_keys_it_keeps():
    vit = tiny_audio_vit(pool="mean")
    assert vit.modality == "audio" and vit.in_chans == 1
    assert (vit.n_mels, vit.clip_seconds, vit.sample_rate, vit.hop_length, vit.frames) == (64, 1.28, 16000, 160, 128)
    assert vit(torch.randn(MEL)).shape == (2, vit.num_features)
    ast = AudioViT("vit_tiny_patch16_224", n_mels=128, clip_seconds=10.24, depth=1)  # AST's input
    assert ast.img_size == (128, 1024) and ast.patch_size == 16 and ast.grid == (8, 64)


def test_audio_vit_refuses_keys_that_give_no_grid():
    with pytest.raises(ConfigError, match="data.clip_seconds"):
        tiny_audio_vit(clip_seconds=0.005)  # 80 samples: less than a hop
    with pytest.raises(ConfigError, match="data.clip_seconds"):
        tiny_audio_vit(clip_seconds=1.27)  # 127 frames: no patch divides them
    with pytest.raises(ConfigError, match="backbone.patch_size"):
        tiny_audio_vit(patch_size=16, n_mels=40)
    with pytest.raises(ConfigError, match="data.n_mels"):
        tiny_audio_vit(n_mels=0)


def test_mae_on_audio_vit_masks_an_exact_count_and_draws_a_picture():
    torch.manual_seed(0)
    vit = tiny_audio_vit()
    mae = MAE(backbone=vit, mask_ratio=0.8, decoder_dim=32, decoder_depth=1, decoder_heads=2,
              views=[{"key": "image"}])
    batch = {"image": torch.randn(MEL), "key": torch.arange(2), "index": torch.arange(2)}
    seen = {}
    vit.vit.blocks[0].register_forward_pre_hook(lambda module, args: seen.update(encoder=args[0].shape))
    mae.decoder.head.register_forward_hook(lambda module, args, out: seen.update(predicted=out.shape))
    out = mae(vit, batch)
    visible = num_visible(128, 0.8)  # int(128 * 0.2) = 25: 103 masked
    assert seen == {"encoder": (2, 1 + visible, vit.embed_dim), "predicted": (2, 128 - visible, 8 * 8)}
    assert torch.isfinite(out.loss) and out.features.shape == (2, vit.embed_dim)
    out.loss.backward()
    assert vit.vit.patch_embed.proj.weight.grad is not None
    picture = mae.visualize(vit, batch)
    assert picture.shape == (3, 2 * 64, 3 * 128) and 0 <= picture.min() and picture.max() <= 1
    first = batch["image"][0, 0]
    scaled = (first - first.min()) / (first.max() - first.min())
    torch.testing.assert_close(picture[0, :64, :128], scaled.flip(0))  # the highest mel bin on top


def test_full_width_cnn14_has_panns_parameter_count():
    """PANNs' CNN14 has 80,753,615 parameters with its 527-class AudioSet layer, which this backbone leaves out."""
    model = CNN14()
    assert model.num_features == 2048 and model.modality == "audio" and model.in_chans == 1
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(80_753_615 - (2048 * 527 + 527), rel=0.01)


def test_small_cnn14_trains_and_its_eval_forward_is_deterministic():
    torch.manual_seed(0)
    model = CNN14(width=4)
    assert (model.n_mels, model.clip_seconds, model.sample_rate, model.hop_length, model.frames) == (
        64, 1.28, 16000, 160, 128)
    features = model(torch.randn(MEL))
    assert features.shape == (2, 128)
    features.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    x = torch.randn(MEL)
    torch.testing.assert_close(model(x), model(x))  # dropout only in training
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 128)  # a shorter clip still pools to one embedding


def test_cnn14_refuses_inputs_its_pooling_would_empty():
    with pytest.raises(ConfigError, match="data.clip_seconds"):
        CNN14(clip_seconds=0.2, width=4)  # 20 frames: fewer than the 32 that five 2x2 poolings need
    with pytest.raises(ConfigError, match="data.n_mels"):
        CNN14(n_mels=16, width=4)
    with pytest.raises(ConfigError, match="mel bins"):
        CNN14(width=4)(torch.randn(2, 1, 40, 128))
