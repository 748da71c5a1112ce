"""Which view is made where: the training and evaluation views of an image data module.

An objective declares its views (its config's `views:` list, parsed into augment.ViewSpec). With
`data.augment_on=cpu` the data workers make every view. With `data.augment_on=gpu` (what `auto` picks when there
is a GPU) the workers only decode:
they pass the image on once, as the `source` field, and the device makes every view from it after transfer,
which also halves the host-to-device copy of two-view objectives. Sources whose images differ in size
(image folders) cannot be batched uncropped, so there the workers crop and flip, and the device does the rest.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torchvision.transforms.v2 import functional as TF

from selfsup.data.augment import CPUView, ViewSpec, augment

SOURCE = "source"  # the batch field of the undecorated image in GPU mode
AUGMENT_ON = ("auto", "cpu", "gpu")


def resolve_augment_on(value: str) -> str:
    """`auto`: on the GPU when there is one (the CPU then only decodes), else in the data workers."""
    if value == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return value

View = Callable[[Any, int], torch.Tensor]


def as_uint8_tensor(image: Any) -> torch.Tensor:
    """A decoded image (PIL or tensor) as a plain (C, H, W) uint8 tensor."""
    tensor = TF.to_image(image).as_subclass(torch.Tensor)
    return tensor if tensor.dtype == torch.uint8 else TF.to_dtype(tensor, torch.uint8, scale=True)


class Decoded:
    """The image as decoded, with no augmentation (GPU mode, same-size sources)."""

    def __call__(self, image: Any, key: int) -> torch.Tensor:
        return as_uint8_tensor(image)


class OnWorker:
    """Converts to a uint8 tensor, then makes the view (or its crop) in the data worker."""

    def __init__(self, view: CPUView) -> None:
        self.view = view

    def __call__(self, image: Any, key: int) -> torch.Tensor:
        return self.view(as_uint8_tensor(image), key)


def worker_views(specs: list[ViewSpec], size: int, augment_on: str, same_size_source: bool) -> dict[str, View]:
    """The fields data workers produce for training batches."""
    if augment_on == "gpu" and same_size_source:
        return {SOURCE: Decoded()}
    stages = "geometric" if augment_on == "gpu" else "all"
    return {spec.key: OnWorker(CPUView(spec, n, spec.size or size, stages)) for n, spec in enumerate(specs)}


def eval_views(specs: list[ViewSpec], size: int) -> dict[str, View]:
    """Deterministic views (resize and centre crop) for validation, pictures and embeddings, all at the data's
    size (also a multi-crop objective's small views)."""
    return {spec.key: OnWorker(CPUView(ViewSpec(key=spec.key), 0, size)) for spec in specs}


def device_views(batch: dict[str, Any], specs: list[ViewSpec], size: int) -> dict[str, Any]:
    """GPU mode: make each view (floats in [0, 1]) on the batch's device from `source` or the workers' crops."""
    source = batch.pop(SOURCE, None)
    for n, spec in enumerate(specs):
        images = source if source is not None else batch[spec.key]
        batch[spec.key] = augment(images, batch["key"], spec, n, spec.size or size, crop=source is not None)
    return batch
