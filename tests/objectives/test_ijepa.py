"""I-JEPA: multi-block masks with the papers' shapes, padded context and targets that change nothing (the loss
equals one computed sample by sample and block by block on the unpadded tokens), and the target encoder."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.backbones.vit import ViT
from selfsup.errors import ConfigError
from selfsup.objectives.ijepa import IJEPA, block_side_limits, multiblock_masks, rectangles

GRID = (8, 8)
VIEW = [{"key": "image"}]


def vit(pool: str = "mean") -> ViT:
    torch.manual_seed(0)
    return ViT("vit_tiny_patch16_224", img_size=32, patch_size=4, in_chans=3, pool=pool, depth=2)


def ijepa(**kwargs) -> tuple[ViT, IJEPA]:
    backbone = vit()
    settings = {"predictor_dim": 32, "predictor_depth": 2, "predictor_heads": 2, **kwargs}
    return backbone, IJEPA(backbone, VIEW, **settings)


def test_rectangles_follow_scale_aspect_and_place():
    numbers = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.3, 0.7]])
    blocks = rectangles(numbers, GRID, (0.15, 0.2), (0.75, 1.5)).view(3, *GRID)
    for row, block in zip(numbers.tolist(), blocks):
        s = 0.15 + 0.05 * row[0]
        a = 0.75 + 0.75 * row[1]
        h = min(max(round(math.sqrt(s * 64 * a)), 1), 7)
        w = min(max(round(math.sqrt(s * 64 / a)), 1), 7)
        top, left = min(math.floor(row[2] * (8 - h + 1)), 8 - h), min(math.floor(row[3] * (8 - w + 1)), 8 - w)
        expected = torch.zeros(GRID, dtype=torch.bool)
        expected[top:top + h, left:left + w] = True
        assert torch.equal(block, expected), row


def test_masks_have_the_papers_shapes_and_the_context_avoids_every_target():
    torch.manual_seed(0)
    b, n = 64, 64
    numbers = torch.rand(b, 4 * 4 + 3 + n)
    h, w = block_side_limits(GRID, (0.15, 0.2), (0.75, 1.5))
    m = multiblock_masks(numbers, GRID, 4, (0.15, 0.2), (0.75, 1.5), (0.85, 1.0), h * w, 20)
    assert m["target_index"].shape == (b, 4, h * w) and m["context_index"].shape == (b, 20)
    sizes = m["target_valid"].sum(-1)
    assert sizes.min() >= 6 and sizes.max() <= h * w  # 0.15 x 64 = 9.6 patches, give or take the rounding
    for i in range(b):
        targets = {int(t) for j in range(4) for t, ok in zip(m["target_index"][i, j], m["target_valid"][i, j]) if ok}
        context = [int(c) for c, ok in zip(m["context_index"][i], m["context_valid"][i]) if ok]
        assert context and not targets & set(context) and len(set(context)) == len(context)
        rows = {t // 8 for t in targets} | {c // 8 for c in context}
        assert max(rows) <= 7
    assert m["context_valid"].all(1).float().mean() > 0.2  # many contexts fill their slots (a random subset) ...
    assert not m["context_valid"].all()  # ... and some are padded


def test_masks_are_keyed_by_sample():
    _, objective = ijepa()
    keys = torch.arange(10)
    whole = objective.masks({"key": keys}, 10, torch.device("cpu"))
    part = objective.masks({"key": keys[6:]}, 4, torch.device("cpu"))
    assert all(torch.equal(whole[k][6:], part[k]) for k in whole)


def test_padding_changes_nothing_loss_equals_the_sample_by_sample_reference():
    backbone, objective = ijepa(context_slots=0.6)
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    batch = {"image": images, "key": torch.tensor([5, 6, 7])}
    loss = objective(backbone, batch).loss
    m = objective.masks(batch, 3, images.device)
    assert not m["context_valid"].all()  # the reference below drops real padding
    errors = []
    with torch.no_grad():
        tokens = objective.teacher["backbone"].forward_tokens(images)[:, 1:]
        targets = F.layer_norm(tokens, (tokens.shape[-1],))
        patches = backbone.patchify(images)
        predictor = objective.predictor
        for i in range(3):
            keep = m["context_index"][i][m["context_valid"][i]]
            context = backbone.encode_patches(patches[i:i + 1], keep=keep[None])[:, 1:]  # no padding at all
            for j in range(4):
                where = m["target_index"][i, j][m["target_valid"][i, j]]
                x = predictor.embed(context) + predictor.positions[keep][None]
                queries = predictor.mask_token + predictor.positions[where][None]
                x = predictor.blocks(torch.cat([x, queries], 1))
                prediction = predictor.project(predictor.norm(x[:, len(keep):]))[0]
                errors.extend(((prediction - targets[i, where]) ** 2).mean(-1).tolist())
    assert loss.item() == pytest.approx(sum(errors) / len(errors), rel=1e-4)


def test_no_gradient_reaches_the_target_encoder_and_the_features_are_its_mean_tokens():
    backbone, objective = ijepa()
    images = torch.randn(2, 3, 32, 32)
    out = objective(backbone, {"image": images})
    out.loss.backward()
    teacher = list(objective.teacher["backbone"].parameters())
    assert all(p.grad is None for p in teacher)
    assert backbone.vit.blocks[0].attn.qkv.weight.grad is not None
    assert objective.predictor.mask_token.grad is not None
    with torch.no_grad():
        expected = objective.teacher["backbone"](images)
    torch.testing.assert_close(out.features, expected)
    assert objective.eval_model(backbone) is objective.teacher["backbone"]


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="backbone.pool=mean"):
        IJEPA(vit(pool="cls"), VIEW)
    with pytest.raises(ConfigError, match="objective.target_scale"):
        ijepa(target_scale=[0.3, 0.2])
    with pytest.raises(ConfigError, match="objective.context_slots"):
        ijepa(context_slots=0)
    with pytest.raises(ConfigError, match="exactly one view"):
        IJEPA(vit(), [{"key": "a"}, {"key": "b"}])
    with pytest.raises(ConfigError, match="objective.loss"):
        ijepa(loss="l1")
