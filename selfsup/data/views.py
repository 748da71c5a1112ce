"""View transforms built from the view specs an objective declares (its config's `views:` list).

A view spec is a dict: `key` (the batch field it fills) and augmentation parameters. Views are made on
uint8 images and stay uint8 until the batch reaches the device, where the data module normalises them:
the CPU does the least work and the host-to-device copy is four times smaller than float32.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torchvision.transforms import v2

from selfsup.errors import ConfigError

VIEW_OPTIONS = {"key", "crop_scale", "hflip"}


def build_view(spec: dict[str, Any], image_size: int) -> Callable[[Any], torch.Tensor]:
    """A training view: random resized crop (`crop_scale`, bicubic) and horizontal flip (`hflip` probability)."""
    unknown = set(spec) - VIEW_OPTIONS
    if unknown:
        raise ConfigError(f"unknown view options {sorted(unknown)} in objective.views; known: {sorted(VIEW_OPTIONS)}")
    steps: list[Any] = [v2.ToImage()]
    if "crop_scale" in spec:
        lo, hi = spec["crop_scale"]
        steps.append(v2.RandomResizedCrop(image_size, scale=(lo, hi), interpolation=v2.InterpolationMode.BICUBIC,
                                          antialias=True))
    else:
        steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    if spec.get("hflip", 0) > 0:
        steps.append(v2.RandomHorizontalFlip(spec["hflip"]))
    steps.append(v2.ToDtype(torch.uint8))
    return v2.Compose(steps)


def eval_view(image_size: int) -> Callable[[Any], torch.Tensor]:
    """The deterministic view for validation and embedding: resize and centre crop."""
    return build_view({"key": "image"}, image_size)
