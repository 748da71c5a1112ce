"""Prompt tuning: trained prompts fit what a head alone cannot, only prompts and head train, the backbone's own
forward is untouched, text prompts sit after [CLS], and other backbones are refused with the fix."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import needs_text

from selfsup.backbones.resnet import ResNet
from selfsup.backbones.vit import ViT
from selfsup.data.datamodule import TensorImages
from selfsup.data.synthetic import Synthetic
from selfsup.errors import ConfigError
from selfsup.evaluation.finetune import Classifier, train_classifier
from selfsup.evaluation.prompt_tuning import Prompted, PromptTuningProtocol, init_prompts
from selfsup.evaluation.protocol import EVAL_VIEWS, EvalContext


def small_vit(depth: int = 2, **kwargs) -> ViT:
    """A ViT of width 16 on 8 x 8 one-channel images in 2 x 2 patches (16 patches)."""
    return ViT("vit_tiny_patch16_224", img_size=8, patch_size=2, in_chans=1, depth=depth, embed_dim=16, num_heads=2,
               **kwargs)


def unit_scale(model: torch.nn.Module) -> torch.nn.Module:
    """Linear layers at LeCun-normal scale (std 1 / sqrt(fan_in)): attention then depends on the input as a trained
    network's does. At timm's std 0.02 a random ViT's attention is near uniform and its blocks' updates tiny, so
    nothing in its input, prompts included, moves its features much."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=m.in_features ** -0.5)
    return model


class RandomLabels(Synthetic):
    """128 noise images with random labels to fit: validation holds them once, training 4 times (an epoch of 8
    steps, so evaluation after each epoch costs little)."""

    def load(self):
        g = torch.Generator().manual_seed(1)
        images = torch.randint(0, 256, (128, 1, 8, 8), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 2, (128,), generator=g)
        return TensorImages(images.repeat(4, 1, 1, 1), labels.repeat(4)), TensorImages(images, labels)


@pytest.fixture
def one_thread():
    """Width-16 tensors: a second intra-op thread only adds synchronisation, and stalls this test 30-fold when
    another job keeps the cores busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_trained_prompts_fit_labels_that_the_head_alone_cannot(one_thread):
    """128 random labels of 16-dimensional features: a linear head (17 weights per class) separates far fewer
    points in general position (Cover 1965), so the frozen backbone with a fixed random prompt stays near chance
    with its head trained; with the prompts trained too (the same model, optimiser and steps) most labels are
    fitted, so the gain comes from the prompts."""
    torch.manual_seed(0)
    backbone = unit_scale(small_vit())
    data = RandomLabels(num_classes=2, image_size=8, channels=1, batch_size=64, num_workers=0, views=EVAL_VIEWS)
    data.setup()
    ctx = EvalContext(data=data, device=torch.device("cpu"), num_classes=2)
    protocol = PromptTuningProtocol(num_prompts=16, epochs=40, lr=3e-2, warmup_epochs=0, label_smoothing=0.0,
                                    views=EVAL_VIEWS)
    fixed = protocol.prepare(copy.deepcopy(backbone), ctx)
    fixed.backbone.prompts.requires_grad_(False)
    torch.manual_seed(0)
    baseline = train_classifier(fixed, ctx, "prompt_tuning", protocol.epochs, 3e-2, 0.0)
    before = copy.deepcopy(backbone.state_dict())
    tuned = protocol.run(backbone, ctx)
    assert baseline["val/prompt_tuning_top1"] < 0.7  # seen: 0.59
    assert tuned["val/prompt_tuning_top1"] > baseline["val/prompt_tuning_top1"] + 0.12, (baseline, tuned)  # 0.82
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())  # the backbone stayed frozen
    total = sum(p.numel() for p in backbone.parameters())
    assert (tuned["trainable_params"], tuned["prompt_params"], tuned["backbone_params"]) == (
        16 * 16 + 16 * 2 + 2, 16 * 16, total)


@pytest.mark.parametrize("depth,sets", [("shallow", 1), ("deep", 3)])
def test_vpt_shallow_and_deep_prompts_parameters_and_shapes(depth, sets):
    torch.manual_seed(0)
    backbone = ViT("vit_tiny_patch16_224", img_size=16, in_chans=3, depth=3, registers=2)
    data = Synthetic(num_samples=8, num_val_samples=8, image_size=16, channels=3, batch_size=4, num_workers=0)
    ctx = EvalContext(data, torch.device("cpu"), 4)
    model = PromptTuningProtocol(num_prompts=5, depth=depth).prepare(backbone, ctx)
    assert model.backbone.prompts.shape == (sets, 5, 192) and model.backbone.prompts.numel() == sets * 5 * 192
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"backbone.prompts", "head.weight",
                                                                          "head.bias"}
    bound = math.sqrt(6 / (3 * backbone.patch_size ** 2 + 192))  # VPT's Xavier-uniform over the patch dimensions
    assert model.backbone.prompts.abs().max() <= bound and model.backbone.prompts.abs().max() > 0.9 * bound
    seen = []  # each block's input: [CLS], 2 registers, then the prompts, then the 64 patches
    for block in backbone.vit.blocks:
        block.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    images = torch.randn(4, 3, 16, 16)
    model.train()
    assert not backbone.training  # the frozen backbone runs in eval mode while prompts and head train
    assert model(images).shape == (4, 4) and backbone(images, prompts=model.backbone.prompts).shape == (4, 192)
    for k, x in enumerate(seen[:3]):
        assert x.shape == (4, 3 + 5 + 64, 192)
        if k < sets:
            assert torch.equal(x[:, 3:8], model.backbone.prompts[k].expand(4, -1, -1))
        else:  # shallow: the later blocks get the previous block's prompt outputs
            assert not torch.equal(x[:, 3:8], model.backbone.prompts[0].expand(4, -1, -1))
    tokens = backbone.forward_tokens(images, prompts=model.backbone.prompts)
    assert tokens.shape == (4, 3 + 64, 192)  # prompt outputs are not returned: pooling never reads them


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_without_prompts_or_with_none_the_forward_is_unchanged(pool):
    torch.manual_seed(0)
    vit = small_vit(registers=1, pool=pool).eval()
    images = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        plain = vit(images)
        for sets in (1, 2):
            assert torch.equal(vit(images, prompts=torch.zeros(sets, 0, 16)), plain)
        prompts = init_prompts(vit, 4, "deep")
        prompted = vit(images, prompts=prompts)
        assert not torch.allclose(prompted, plain)
        patches, valid = vit.patchify(images), torch.ones(3, 16, dtype=torch.bool)
        torch.testing.assert_close(vit.pool_tokens(vit.encode_patches(patches, key_valid=valid, prompts=prompts)),
                                   prompted)  # padding masks and prompts go together


@needs_text
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_text_prompts_follow_cls_extend_the_mask_and_leave_the_backbone_frozen(pool):
    from selfsup.backbones.text_transformer import TextTransformer

    torch.manual_seed(0)
    text = TextTransformer(vocab_size=50, dim=16, depth=2, heads=2, pool=pool)
    prompts = init_prompts(text, 4, "shallow", seed=3)
    words = text.token_embed.weight[5:]  # drawn from word pieces' rows, never the 5 special tokens'
    assert prompts.shape == (1, 4, 16) and all((row == words).all(1).any() for row in prompts[0])
    assert torch.equal(prompts, init_prompts(text, 4, "shallow", seed=3))  # seeded
    model = Classifier(Prompted(text, prompts), 3)
    ids = torch.randint(5, 50, (6, 7))
    ids[:, 0] = 2  # [CLS]
    mask = torch.ones_like(ids)
    mask[0, 5:], mask[3, 2:] = 0, 0
    seen = []
    text.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args))
    with torch.no_grad():
        pooled = text(ids, mask, prompts=prompts)
    x, keep = seen[0]
    assert pooled.shape == (6, 16) and x.shape == (6, 7 + 4, 16)
    embedded = text.token_embed(ids) + text.pos_embed[:, :7] + text.type_embed.weight[0]
    torch.testing.assert_close(x[:, 0], embedded[:, 0])  # [CLS] first, with its position
    assert torch.equal(x[:, 1:5], prompts[0].expand(6, -1, -1))  # then the prompts, with no position added
    torch.testing.assert_close(x[:, 5:], embedded[:, 1:])  # then the words at their own positions
    expected = torch.cat([mask[:, :1], torch.ones(6, 4, dtype=mask.dtype), mask[:, 1:]], dim=1).bool()
    assert torch.equal(keep[:, 0, 0], expected)  # prompts always attended, padding never
    other = ids.clone()
    other[0, 5:], other[3, 2:] = 7, 9
    with torch.no_grad():
        torch.testing.assert_close(text(other, mask, prompts=prompts), pooled)  # padding still changes nothing
        assert not torch.allclose(text(ids, mask, prompts=prompts + 1), pooled)  # the prompts are attended to

    frozen = copy.deepcopy(text.state_dict())
    labels = torch.arange(6) % 3
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    assert not text.training
    for _ in range(3):
        loss = F.cross_entropy(model(ids, mask), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(frozen[k], v) for k, v in text.state_dict().items())  # token embedding included
    assert not torch.equal(model.backbone.prompts, prompts)
    with torch.no_grad():
        deep = init_prompts(text, 4, "deep")
        assert deep.shape == (2, 4, 16) and text(ids, mask, prompts=deep).shape == (6, 16)
        for sets in (1, 2):  # no prompts: the forward is the plain one
            assert torch.equal(text(ids, mask, prompts=torch.zeros(sets, 0, 16)), text(ids, mask))


def test_a_resnet_is_refused_with_the_fix():
    data = Synthetic(num_samples=8, num_val_samples=8, image_size=32, channels=3, batch_size=4, num_workers=0)
    with pytest.raises(ConfigError, match=r"protocol=linear\|finetune") as info:
        resnet = ResNet("resnet18", img_size=32, in_chans=3)
        PromptTuningProtocol().prepare(resnet, EvalContext(data, torch.device("cpu"), 10))
    assert "\n" not in str(info.value) and "ResNet" in str(info.value)
    with pytest.raises(ConfigError, match="protocol.depth"):
        PromptTuningProtocol(depth="middle")
    with pytest.raises(ConfigError, match="protocol.num_prompts"):
        PromptTuningProtocol(num_prompts=-1)
