"""MAE: exact masking, the loss against a brute-force reference, and learning on one batch."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_vit

from selfsup.errors import ConfigError
from selfsup.objectives.mae import MAE, normalize_patches, random_masking, reconstruction_loss


@pytest.mark.parametrize("ratio,n", [(0.75, 49), (0.5, 64), (0.9, 196), (0.6, 10)])
def test_masking_keeps_an_exact_count_and_restore_inverts_the_shuffle(ratio, n):
    noise = torch.rand(16, n)
    keep, masked, restore = random_masking(noise, ratio)
    n_keep = int(n * (1 - ratio))
    assert keep.shape == (16, n_keep) and masked.shape == (16, n - n_keep)
    shuffle = torch.cat([keep, masked], dim=1)
    # keep and masked partition the patches: every index exactly once per row
    assert torch.equal(shuffle.sort(dim=1).values, torch.arange(n).expand(16, n))
    # restore inverts the shuffle, both ways round
    assert torch.equal(torch.gather(shuffle, 1, restore), torch.arange(n).expand(16, n))
    assert torch.equal(torch.gather(restore, 1, shuffle), torch.arange(n).expand(16, n))
    # the kept patches are those with the lowest noise
    assert torch.all(torch.gather(noise, 1, keep).amax(1) <= torch.gather(noise, 1, masked).amin(1))


def test_masks_differ_between_samples_and_follow_the_sample_key():
    vit = tiny_vit()
    mae = MAE(vit, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    batch = {"image": torch.zeros(4, 1, 28, 28), "key": torch.tensor([1, 2, 3, 1])}
    noise = mae.mask_noise(batch, 49)
    assert not torch.equal(noise[0], noise[1]) and torch.equal(noise[0], noise[3])


def reference_loss(pred_all, patches, masked, norm_pix):
    """The official formula: per-patch MSE, averaged over masked patches via a 0/1 mask."""
    target = patches
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    mask = torch.zeros(patches.shape[:2]).scatter_(1, masked, 1.0)
    per_patch = ((pred_all - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_equals_the_brute_force_reference_and_ignores_visible_patches(norm_pix):
    torch.manual_seed(0)
    b, n, p = 4, 49, 16
    patches, pred_all = torch.randn(b, n, p), torch.randn(b, n, p)
    keep, masked, _ = random_masking(torch.rand(b, n), 0.75)
    pred_masked = torch.gather(pred_all, 1, masked.unsqueeze(-1).expand(-1, -1, p))
    loss = reconstruction_loss(pred_masked, patches, masked, norm_pix)
    torch.testing.assert_close(loss, reference_loss(pred_all, patches, masked, norm_pix))

    changed = patches.clone()
    changed[0, keep[0, 0]] += 100.0  # a visible patch's target
    assert torch.equal(reconstruction_loss(pred_masked, changed, masked, norm_pix), loss)
    changed = patches.clone()
    changed[0, masked[0, 0]] += torch.linspace(0, 100, p)  # a masked patch's target (not a constant shift, which
    # normalised pixels ignore)
    assert not torch.equal(reconstruction_loss(pred_masked, changed, masked, norm_pix), loss)


def test_normalized_targets_have_zero_mean_unit_variance():
    t = normalize_patches(torch.randn(3, 10, 48) * 5 + 2)
    torch.testing.assert_close(t.mean(-1), torch.zeros(3, 10), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.var(-1), torch.ones(3, 10), atol=1e-3, rtol=0)


def test_residual_streams_stay_float32_under_bf16_autocast():
    """Only matmuls run in bf16: the encoder's and the decoder's blocks receive float32 tokens, as in timm and
    the official MAE (a bf16 residual stream would round every block's update)."""
    vit = tiny_vit()
    mae = MAE(vit, mask_ratio=0.75, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    seen = {}
    for name, block in (("encoder", vit.vit.blocks[0]), ("decoder", mae.decoder.blocks[0])):
        block.register_forward_pre_hook(lambda module, args, name=name: seen.update({name: args[0].dtype}))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mae(vit, {"image": torch.randn(2, 1, 28, 28), "key": torch.arange(2)}).loss
    assert seen == {"encoder": torch.float32, "decoder": torch.float32} and loss.dtype == torch.float32


def test_tiny_mae_overfits_one_batch():
    torch.manual_seed(0)
    vit = tiny_vit()
    mae = MAE(vit, mask_ratio=0.75, decoder_dim=64, decoder_depth=1, decoder_heads=4, norm_pix_loss=False)
    g = torch.Generator().manual_seed(0)
    smooth = F.interpolate(torch.randn(8, 1, 4, 4, generator=g), size=28, mode="bilinear", align_corners=False)
    batch = {"image": smooth, "key": torch.arange(8)}
    opt = torch.optim.AdamW(list(vit.parameters()) + list(mae.parameters()), lr=1e-3)
    losses = []
    for _ in range(150):
        loss = mae(vit, batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5, (losses[0], losses[-1])


def test_visualize_draws_three_columns():
    vit = tiny_vit()
    mae = MAE(vit, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    picture = mae.visualize(vit, {"image": torch.randn(3, 1, 28, 28), "key": torch.arange(3)})
    assert picture.shape == (3, 3 * 28, 3 * 28) and 0 <= picture.min() and picture.max() <= 1


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_mask_ratio_outside_the_open_interval_is_refused(ratio):
    with pytest.raises(ConfigError, match="mask_ratio"):
        MAE(tiny_vit(), mask_ratio=ratio)
