"""The ResNet backbone: the CIFAR stem for small images, and what it refuses."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup.backbones.resnet import ResNet
from selfsup.errors import ConfigError


@pytest.mark.parametrize("size,stem", [(28, True), (64, True), (96, False), (224, False)])
def test_resnet_uses_the_cifar_stem_for_small_images(size, stem):
    model = ResNet("resnet18", img_size=size, in_chans=1)
    assert model.cifar_stem is stem
    feats = model(torch.randn(2, 1, size, size))
    assert feats.shape == (2, 512)
    assert isinstance(model.net.maxpool, nn.Identity) is stem


@pytest.mark.parametrize("name,message", [("resnet_nonexistent", "unknown timm model"),
                                          ("vit_tiny_patch16_224", "not a ResNet")])
def test_resnet_rejects_other_models(name, message):
    with pytest.raises(ConfigError, match=message):
        ResNet(name, img_size=32)
