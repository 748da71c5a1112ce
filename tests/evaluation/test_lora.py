"""LoRA through peft: only its parameters train, it computes and trains as the paper's LoRA written out, merging is
exact, and the adapter it saves loads back with peft."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import needs_text
from helpers import tiny_vit_16px as tiny_vit
from torch import nn

from selfsup.backbones.resnet import ResNet
from selfsup.data.synthetic import Synthetic
from selfsup.errors import ConfigError
from selfsup.evaluation.finetune import Classifier
from selfsup.evaluation.lora import (
    ADAPTER_FILES,
    LoRAProtocol,
    apply_lora,
    lora_layers,
    lora_parameters,
    merge_lora,
)
from selfsup.evaluation.protocol import EvalContext


def tiny_text():
    from selfsup.backbones.text_transformer import TextTransformer

    return TextTransformer(vocab_size=50, dim=16, depth=2, heads=2, dropout=0.0, attn_dropout=0.0)


def image_batch():
    return (torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)),)


def text_batch():
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(8, 6, dtype=torch.long)
    mask[::2, 4:] = 0  # some padding
    return torch.randint(5, 50, (8, 6), generator=g), mask


def factors(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A peft LoRA layer's A (r x in), B (out x r) and scale alpha / r."""
    return layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]


class ReferenceLoRA(nn.Module):
    """The paper's LoRA written out: W x + b + (alpha / r) B A x, W and b frozen, A and B trained."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.register_buffer("weight", base.weight.detach().clone())
        self.register_buffer("bias", base.bias.detach().clone())
        self.A = nn.Parameter(a.detach().clone())
        self.B = nn.Parameter(b.detach().clone())
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.scale * F.linear(F.linear(x, self.A), self.B)

    def merged_weight(self) -> torch.Tensor:
        return self.weight + self.scale * self.B @ self.A


def train_steps(model: nn.Module, inputs: tuple[torch.Tensor, ...], steps: int = 5) -> None:
    labels = torch.arange(len(inputs[0])) % 3
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01)
    for _ in range(steps):
        loss = F.cross_entropy(model(*inputs), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_lora_trains_only_its_parameters_and_merges_exactly():
    torch.manual_seed(0)
    backbone = tiny_vit()
    model = Classifier(apply_lora(backbone, rank=4, alpha=8), 3)
    prefix = "backbone.base_model.model.vit.blocks.0.attn"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{prefix}.{layer}.lora_{f}.default.weight" for layer in ("qkv", "proj") for f in "AB"} | \
        {"head.weight", "head.bias"}
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    (images,) = image_batch()
    x0 = model(images).detach()
    train_steps(model, (images,), steps=3)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[name]), f"{name} changed"
    assert len(lora_parameters(model)) == 4 and all(p.abs().sum() > 0 for p in lora_parameters(model))  # B moved
    assert not torch.allclose(model(images), x0)

    layer = backbone.vit.blocks[0].attn.qkv
    a, b, scale = factors(layer)
    expected = (layer.base_layer.weight + scale * b @ a).detach()
    assert scale == 2.0 and len(lora_layers(model)) == 2
    model.eval()
    with torch.no_grad():
        unmerged = model(images)
        model.backbone = merge_lora(model.backbone)
        merged = model(images)
    assert model.backbone is backbone and type(backbone.vit.blocks[0].attn.qkv) is nn.Linear  # the original module
    torch.testing.assert_close(backbone.vit.blocks[0].attn.qkv.weight, expected)
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["vit", pytest.param("text", marks=needs_text)])
def test_peft_lora_trains_as_the_paper_lora_written_out(kind):
    """Same A and B, optimizer and data: peft's model and a reference LoRA end with the same merged weights, and
    peft's merge is W + (alpha / r) B A. peft's initialisation is the paper's: B zero, A Kaiming-uniform."""
    torch.manual_seed(0)
    backbone, inputs = (tiny_vit(), image_batch()) if kind == "vit" else (tiny_text(), text_batch())
    reference_backbone = copy.deepcopy(backbone).requires_grad_(False)
    model = Classifier(apply_lora(backbone, rank=4, alpha=8), 3)
    peft_layers = {name.removeprefix("base_model.model."): m for name, m in model.backbone.named_modules()
                   if m in lora_layers(model)}
    assert len(peft_layers) == (2 if kind == "vit" else 4)
    for name, layer in peft_layers.items():
        a, b, scale = factors(layer)
        assert torch.equal(b, torch.zeros_like(b)) and 0 < a.abs().max() <= 1 / a.shape[1] ** 0.5  # a=sqrt(5) bound
        parent, _, child = name.rpartition(".")
        setattr(reference_backbone.get_submodule(parent), child, ReferenceLoRA(layer.base_layer, a, b, scale))
    reference = Classifier(reference_backbone, 3)  # trains its A and B and its head
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(*inputs), reference_backbone(*inputs))  # the pretrained function

    train_steps(model, inputs)
    train_steps(reference, inputs)
    torch.testing.assert_close(model.head.weight, reference.head.weight)
    expected = {}
    for name, layer in peft_layers.items():
        ref = reference_backbone.get_submodule(name)
        a, b, scale = factors(layer)
        torch.testing.assert_close(a, ref.A)
        torch.testing.assert_close(b, ref.B)
        assert b.abs().sum() > 0  # the update is not trivially zero
        expected[name] = (layer.base_layer.weight + scale * b @ a).detach()
    merged = merge_lora(model.backbone)
    for name, weight in expected.items():
        assert type(merged.get_submodule(name)) is nn.Linear
        torch.testing.assert_close(merged.get_submodule(name).weight, weight)  # W + (alpha / r) B A
        torch.testing.assert_close(merged.get_submodule(name).weight, reference_backbone.get_submodule(name)
                                   .merged_weight())


def lora_trainable(rank, n):
    return rank * (192 + 3 * 192) + rank * (192 + 192) + 192 * n + n  # qkv's and proj's A and B, and the head


def test_lora_protocol_saves_a_peft_adapter_that_loads_back(tmp_path):
    """eval.py's LoRA writes the adapter in peft's format before merging: loaded onto the pretrained backbone with
    peft and merged, it gives the evaluated model's weights exactly; a second evaluation replaces it whole."""
    from peft import PeftModel

    data = Synthetic(num_samples=32, num_val_samples=16, image_size=16, channels=3, batch_size=16, num_workers=0,
                     views=LoRAProtocol().views)
    data.setup()
    folder = tmp_path / "adapters" / "lora"
    ctx = EvalContext(data=data, device=torch.device("cpu"), num_classes=10, adapter_dir=folder)
    torch.manual_seed(0)
    backbone = tiny_vit()
    pretrained = copy.deepcopy(backbone)
    result = LoRAProtocol(epochs=1, rank=2, alpha=4, warmup_epochs=0).run(backbone, ctx)
    assert result["lora_layers"] == 2 and result["trainable_params"] == lora_trainable(2, 10)
    assert result["adapter"] == str(folder) and sorted(p.name for p in folder.iterdir()) == sorted(ADAPTER_FILES)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 2, 4)
    assert sorted(config["target_modules"]) == ["vit.blocks.0.attn.proj", "vit.blocks.0.attn.qkv"]
    assert type(backbone.vit.blocks[0].attn.qkv) is nn.Linear  # merged in place: what eval.py measured

    loaded = PeftModel.from_pretrained(copy.deepcopy(pretrained), str(folder)).merge_and_unload()
    state, merged = loaded.state_dict(), backbone.state_dict()
    assert state.keys() == merged.keys()
    for name, tensor in merged.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, msg=name)
    qkv = "vit.blocks.0.attn.qkv.weight"
    assert not torch.equal(state[qkv], pretrained.state_dict()[qkv])  # the adapter changed something

    LoRAProtocol(epochs=1, rank=4, warmup_epochs=0).run(copy.deepcopy(pretrained), ctx)
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 4
    assert [p.name for p in folder.parent.iterdir()] == ["lora"]  # no temporary or previous folder left


def test_lora_on_a_resnet_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="protocol=finetune"):
        apply_lora(ResNet("resnet18", img_size=32, in_chans=3))
    with pytest.raises(ConfigError, match="protocol.rank must be >= 1"):
        LoRAProtocol(rank=0)


@needs_text
def test_lora_on_the_text_backbone_merges_exactly():
    torch.manual_seed(0)
    text = tiny_text()
    adapted = apply_lora(text, rank=2)
    assert len(lora_layers(adapted)) == 4  # qkv and proj of both blocks
    for p in lora_parameters(adapted):
        torch.nn.init.normal_(p)  # B non-zero: the update matters
    ids, mask = text_batch()
    with torch.no_grad():
        before = adapted.eval()(ids, mask)
        merged = merge_lora(adapted)
        assert merged is text and not lora_layers(text)
        torch.testing.assert_close(text(ids, mask), before, rtol=1e-4, atol=1e-4)
