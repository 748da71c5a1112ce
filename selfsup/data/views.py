"""Which view is made where: the training and evaluation views of an image data module.

An objective declares its views (its config's `views:` list, parsed into augment.ViewSpec). Per sample, the data
workers only decode: they pass the image on once, as the `source` field. Sources whose images differ in size
(image folders) cannot be batched uncropped, so there the workers also crop and flip each image. The rest of every
view is made on the whole batch, by the same per-sample code (augment.py):
- `data.augment_on=gpu` (what `auto` picks when there is a GPU): on the device after transfer, which also halves
  the host-to-device copy of two-view objectives;
- `data.augment_on=cpu`: in the data worker, when it collates the batch (`worker_batch_views`). Made image by
  image, a 28 px view costs a few hundred tiny tensor operations, each dominated by its fixed overhead; made for
  the batch at once, each operation is one pass over many images.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torchvision.transforms.v2 import functional as TF

from selfsup.data import cpu_views
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


def worker_views(specs: list[ViewSpec], size: int, augment_on: str, same_size_source: bool,
                 batched: bool = False) -> dict[str, View]:
    """The fields data workers produce per sample for training batches: the decoded image, or its crops where
    images differ in size, when the views are finished on the batch (GPU mode, or `batched` CPU mode); else
    every view, image by image (sources that collate their own batches)."""
    if augment_on == "cpu" or not same_size_source:  # the workers make views or crops: build the kernel here,
        cpu_views.library()  # once, so that the data workers forked later load it rather than each build it
    if augment_on == "gpu" or batched:
        if same_size_source:
            return {SOURCE: Decoded()}
        stages = "geometric"
    else:
        stages = "all"
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


CHUNK_VALUES = 2**20  # float values per chunk of samples in worker_batch_views: 4 MB, about a core's cache


def worker_batch_views(batch: dict[str, Any], specs: list[ViewSpec], size: int) -> dict[str, Any]:
    """CPU mode: make each view (uint8, as the workers hand views over) of a collated batch in the data worker.

    cpu_views.c takes the whole batch (it makes each view in the cache by itself). The tensor route takes chunks
    of about CHUNK_VALUES values: the whole batch at once for small images, where per-operation overhead
    dominates, and a few images at a time for large ones, whose passes then stay in the cache and whose memory
    stays bounded. Each sample's view is the one device_views makes (keyed)."""
    source = batch.pop(SOURCE, None)
    for n, spec in enumerate(specs):
        images = source if source is not None else batch[spec.key]
        side = spec.size or size
        values = max(images[0].numel(), images.shape[1] * side * side)
        chunk = len(images) if cpu_views.usable(images) else max(1, CHUNK_VALUES // values)
        batch[spec.key] = torch.cat([
            augment(images[i:i + chunk], batch["key"][i:i + chunk], spec, n, side, crop=source is not None, uint8=True)
            for i in range(0, len(images), chunk)])
    return batch
