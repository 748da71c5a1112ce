"""DINOv2's pieces against references written here: block masks (exact counts, ratios, blocks, keyed by sample),
iBOT's loss at the masked patches, KoLeo, and the objective end to end on a ViT with registers."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.backbones.vit import ViT
from selfsup.errors import ConfigError
from selfsup.objectives.dino import dino_loss
from selfsup.objectives.dinov2 import BLOCKS_PER_MASK, DINOv2, block_masks, ibot_loss, koleo_loss

GRID = (14, 14)
N = GRID[0] * GRID[1]
SLOTS = math.floor(0.5 * N + 0.5)
VIEWS = [{"key": "global1"}, {"key": "global2"}, {"key": "local1"}]


def masks_of(count: int, seed: int = 0, probability: float = 0.5):
    noise = torch.rand(count, 2 + 4 * BLOCKS_PER_MASK + N, generator=torch.Generator().manual_seed(seed))
    return noise, block_masks(noise, GRID, probability, (0.1, 0.5), SLOTS)


def components(mask: torch.Tensor) -> int:
    """4-connected components of a (14, 14) bool mask."""
    seen, count = set(), 0
    cells = {(int(r), int(c)) for r, c in mask.nonzero()}
    for cell in cells:
        if cell in seen:
            continue
        count += 1
        stack = [cell]
        while stack:
            r, c = stack.pop()
            if (r, c) in seen or (r, c) not in cells:
                continue
            seen.add((r, c))
            stack.extend([(r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)])
    return count


def test_masked_crops_mask_exactly_round_r_n_patches_and_the_slots_list_them():
    noise, (masked, slots, valid) = masks_of(2000)
    ratio = 0.1 + 0.4 * noise[:, 1]
    expected = torch.where(noise[:, 0] < 0.5, torch.floor(ratio * N + 0.5), 0)
    assert torch.equal(masked.sum(1).float(), expected)
    assert torch.equal(valid.sum(1).float(), expected)
    for row in range(0, 2000, 97):
        listed = slots[row][valid[row]]
        assert len(set(listed.tolist())) == len(listed)
        assert torch.equal(torch.sort(listed).values, masked[row].nonzero().flatten())
    share = (expected > 0).float().mean()
    assert abs(share - 0.5) < 0.04
    assert abs((expected[expected > 0] / N).mean() - 0.3) < 0.01  # U[0.1, 0.5]
    assert slots.shape == valid.shape == (2000, SLOTS)


def test_masks_are_blocks_not_scattered_patches():
    """A random mask of the same counts has many components; block masks few."""
    noise, (masked, _, _) = masks_of(300, seed=1, probability=1.0)
    order = torch.rand(300, N, generator=torch.Generator().manual_seed(2)).argsort(1)
    scattered = torch.zeros_like(masked)
    for row in range(300):
        scattered[row, order[row, : int(masked[row].sum())]] = True
    blocks = sum(components(m.view(GRID)) for m in masked) / 300
    random = sum(components(m.view(GRID)) for m in scattered) / 300
    assert blocks < 0.25 * random, (blocks, random)


def test_ibot_loss_is_the_cross_entropy_at_masked_patches_weighted_per_crop():
    torch.manual_seed(3)
    student, teacher = torch.randn(3, 4, 6), torch.randn(3, 4, 6)
    valid = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    targets = F.softmax(teacher / 0.05, dim=-1)
    total = 0.0
    for b in range(3):
        count = int(valid[b].sum())
        for s in range(4):
            if valid[b, s]:
                log_p = [math.log(math.exp(student[b, s, k] / 0.1) / sum(math.exp(v / 0.1) for v in student[b, s]))
                         for k in range(6)]
                total += -sum(float(targets[b, s, k]) * log_p[k] for k in range(6)) / count
    torch.testing.assert_close(ibot_loss(student, targets, valid, 0.1), torch.tensor(total / 3), rtol=1e-5, atol=1e-6)


def test_koleo_is_minus_the_mean_log_distance_to_the_nearest_neighbour():
    torch.manual_seed(4)
    x = torch.randn(7, 5)
    rows = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in x.tolist()]
    total = 0.0
    for i, a in enumerate(rows):
        distances = [math.dist(a, b) for j, b in enumerate(rows) if j != i]
        total += -math.log(min(distances))
    torch.testing.assert_close(koleo_loss(x), torch.tensor(total / 7), rtol=1e-4, atol=1e-5)


def vit() -> ViT:
    return ViT("vit_tiny_patch16_224", img_size=28, patch_size=4, in_chans=1, depth=1, registers=4, layer_scale=1e-5)


def dinov2(backbone, **kwargs) -> DINOv2:
    torch.manual_seed(5)
    settings = {"out_dim": 16, "patch_out_dim": 12, "hidden_dim": 8, "bottleneck_dim": 4, **kwargs}
    return DINOv2(backbone, VIEWS, **settings)


def batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(6)
    return {"global1": torch.randn(4, 1, 28, 28), "global2": torch.randn(4, 1, 28, 28),
            "local1": torch.randn(4, 1, 12, 12), "key": torch.arange(4) * 11}


def test_the_losses_equal_a_reference_written_with_boolean_masks():
    """The objective's DINO, iBOT and KoLeo terms, rebuilt here from the masks: the masked student's patch tokens at
    the masked positions (boolean indexing, not slots) against the unmasked teacher's, EMA centre at 0."""
    torch.manual_seed(7)
    backbone = vit()
    objective = dinov2(backbone, centering="ema", mask_probability=1.0).eval()  # eval: the centre stays at 0
    with torch.no_grad():
        objective.mask_token.normal_()
    b = batch()
    out = objective(backbone, b)
    globals_ = torch.cat([b["global1"], b["global2"]])
    masked, _, _ = objective.masks(b, 4, (7, 7), globals_.device)
    assert masked.any(1).all()
    temp = float(objective.teacher_temp)
    with torch.no_grad():
        tokens = backbone.forward_tokens(globals_, masked=masked, mask_token=objective.mask_token)
        teacher_tokens = objective.teacher["backbone"].forward_tokens(globals_)
        cls = tokens[:, 0]
        student = [*objective.head(cls).chunk(2), objective.head(backbone(b["local1"]))]
        targets = F.softmax(objective.teacher["head"](teacher_tokens[:, 0]) / temp, dim=-1).chunk(2)
        ibot = 0.0
        for crop in range(8):
            at = masked[crop]
            s = F.log_softmax(objective.patch_head(tokens[crop, 5:][at]) / 0.1, dim=-1)
            t = F.softmax(objective.teacher["patch_head"](teacher_tokens[crop, 5:][at]) / temp, dim=-1)
            ibot += -(t * s).sum(-1).mean() / 8
        koleo = koleo_loss(cls[:4]) + koleo_loss(cls[4:])
    torch.testing.assert_close(out.metrics["dino_loss"], dino_loss(student, list(targets), 0.1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.metrics["ibot_loss"], ibot, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.metrics["koleo_loss"], koleo, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, out.metrics["dino_loss"] + out.metrics["ibot_loss"] + 0.1 * koleo)


def test_masks_are_keyed_by_sample_and_view():
    objective = dinov2(vit())
    b = batch()
    masked, _, _ = objective.masks(b, 4, (7, 7), torch.device("cpu"))
    subset = {"key": b["key"][[2, 0]]}
    again, _, _ = objective.masks(subset, 2, (7, 7), torch.device("cpu"))
    assert torch.equal(again[[0, 1]], masked[[2, 0]]) and torch.equal(again[[2, 3]], masked[[6, 4]])
    assert not torch.equal(masked[:4], masked[4:])  # the two global crops of a sample differ


def test_gradients_reach_the_student_and_mask_token_not_the_teacher():
    backbone = vit()
    objective = dinov2(backbone, mask_probability=1.0).train()
    objective(backbone, batch()).loss.backward()
    assert objective.mask_token.grad is not None and objective.mask_token.grad.abs().sum() > 0
    assert all(p.grad is not None for p in objective.patch_head.parameters())
    assert all(p.grad is None and not p.requires_grad for p in objective.teacher.parameters())
    assert set(objective.teacher.copies) == {"backbone", "head", "patch_head"}


def test_both_heads_are_frozen_in_the_first_epoch_and_a_shared_head_works():
    backbone = vit()
    objective = dinov2(backbone)
    objective.bind_schedule(10, 100)
    assert objective.frozen_parameters(9) == [objective.head.prototypes, objective.patch_head.prototypes]
    assert objective.frozen_parameters(10) == []
    shared = dinov2(backbone, separate_patch_head=False)
    shared.bind_schedule(10, 100)
    assert shared.patch_head is shared.head and set(shared.teacher.copies) == {"backbone", "head"}
    assert shared.frozen_parameters(0) == [shared.head.prototypes]
    assert torch.isfinite(shared.train()(backbone, batch()).loss)


def test_a_resnet_and_bad_settings_are_refused():
    from selfsup.backbones.resnet import ResNet

    with pytest.raises(ConfigError, match="needs a ViT backbone"):
        DINOv2(ResNet("resnet18", in_chans=1), VIEWS)
    for kwargs, message in (({"mask_ratio": [0.5, 0.1]}, "objective.mask_ratio"),
                            ({"mask_probability": 1.5}, "objective.mask_probability"),
                            ({"koleo_weight": -1}, "objective.koleo_weight")):
        with pytest.raises(ConfigError, match=message):
            dinov2(vit(), **kwargs)
