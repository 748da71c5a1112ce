"""LoRA: only its parameters train, and merging is exact."""
from __future__ import annotations

import pytest
import torch
from conftest import needs_text
from helpers import tiny_vit_16px as tiny_vit

from selfsup.backbones.resnet import ResNet
from selfsup.errors import ConfigError


def test_lora_trains_only_its_parameters_and_merges_exactly():
    from selfsup.evaluation.finetune import Classifier
    from selfsup.evaluation.lora import LoRALinear, apply_lora, lora_parameters, merge_lora

    torch.manual_seed(0)
    backbone = tiny_vit()
    wrapped = apply_lora(backbone, rank=4, alpha=8)
    assert sorted(wrapped) == ["vit.blocks.0.attn.proj", "vit.blocks.0.attn.qkv"]
    model = Classifier(backbone, 3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"backbone.vit.blocks.0.attn.qkv.lora_A", "backbone.vit.blocks.0.attn.qkv.lora_B",
                         "backbone.vit.blocks.0.attn.proj.lora_A", "backbone.vit.blocks.0.attn.proj.lora_B",
                         "head.weight", "head.bias"}
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    images = torch.randn(8, 3, 16, 16)
    x0 = model(images).detach()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(images), torch.arange(8) % 3)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[name]), f"{name} changed"
    assert all(p.abs().sum() > 0 for p in lora_parameters(model))  # B moved away from zero
    assert not torch.allclose(model(images), x0)

    layer = backbone.vit.blocks[0].attn.qkv
    assert isinstance(layer, LoRALinear)
    expected = layer.base.weight + layer.scale * layer.lora_B @ layer.lora_A
    assert layer.scale == 2.0
    model.eval()
    with torch.no_grad():
        unmerged = model(images)
        assert merge_lora(model) == 2
        merged = model(images)
    assert type(backbone.vit.blocks[0].attn.qkv) is torch.nn.Linear
    torch.testing.assert_close(backbone.vit.blocks[0].attn.qkv.weight, expected.detach())
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)


def test_lora_on_a_resnet_is_refused_with_the_fix():
    from selfsup.evaluation.lora import apply_lora

    with pytest.raises(ConfigError, match="protocol=finetune"):
        apply_lora(ResNet("resnet18", img_size=32, in_chans=3))


@needs_text
def test_lora_on_the_text_backbone_merges_exactly():
    from selfsup.backbones.text_transformer import TextTransformer
    from selfsup.evaluation.lora import apply_lora, merge_lora

    torch.manual_seed(0)
    text = TextTransformer(vocab_size=50, dim=16, depth=2, heads=2, dropout=0.0, attn_dropout=0.0)
    assert len(apply_lora(text, rank=2)) == 4
    for p in text.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p)  # B non-zero: the update matters
    ids, mask = torch.randint(5, 50, (3, 6)), torch.ones(3, 6, dtype=torch.long)
    with torch.no_grad():
        before = text.eval()(ids, mask)
        merge_lora(text)
        torch.testing.assert_close(text(ids, mask), before, rtol=1e-4, atol=1e-4)
