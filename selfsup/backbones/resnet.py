"""ResNet backbone: any timm ResNet by name, with the CIFAR stem for small images."""
from __future__ import annotations

import timm
import torch
from timm.models.resnet import ResNet as TimmResNet
from torch import nn

from selfsup.errors import ConfigError

SMALL_IMAGE_MAX = 64  # `cifar_stem: auto` uses the CIFAR stem up to this size


class ResNet(nn.Module):
    """A timm ResNet returning globally pooled features (B, D).

    The CIFAR stem (a 3x3 stride-1 convolution and no max-pool, as SimCLR's CIFAR experiments) keeps the
    resolution of images of 64 px and less, which the ImageNet stem would shrink 4x before the first block.
    On GPUs the network runs channels_last (the module moves to it; inputs are converted here).
    """

    modality = "image"

    def __init__(self, name: str = "resnet18", img_size: int = 224, in_chans: int = 3,
                 cifar_stem: bool | str = "auto", zero_init_residual: bool = True, **timm_kwargs) -> None:
        super().__init__()
        if not timm.is_model(name):
            raise ConfigError(f"unknown timm model '{name}' for backbone.name; list ResNets with "
                              "timm.list_models('resnet*')")
        not_resnet = ConfigError(f"timm model '{name}' is not a ResNet; pick a 'resnet*' model for backbone.name")
        try:
            self.net = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0,
                                         zero_init_last=zero_init_residual, **timm_kwargs)
        except TypeError as e:  # another family's class: no zero_init_last
            raise not_resnet from e
        if not isinstance(self.net, TimmResNet):
            raise not_resnet
        if cifar_stem == "auto":
            cifar_stem = img_size <= SMALL_IMAGE_MAX
        if cifar_stem:
            width = self.net.conv1.out_channels if isinstance(self.net.conv1, nn.Conv2d) else 64
            self.net.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.net.bn1 = nn.BatchNorm2d(width)
            self.net.maxpool = nn.Identity()
        self.name = name
        self.img_size = img_size
        self.in_chans = in_chans
        self.cifar_stem = bool(cifar_stem)

    @property
    def num_features(self) -> int:
        return self.net.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Image features (B, D): the globally average-pooled last stage."""
        if images.is_cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)
