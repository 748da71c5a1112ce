"""Features of a backbone on evaluation batches: one function for every modality, and whole-split extraction.

Evaluation batches come from a data module's `eval_dataloader` (deterministic views, labels where the source
has them, `index` of each sample); `features(backbone, batch)` picks the inputs the backbone's modality needs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable

import torch
from torch import nn

from selfsup.data.audio import AUDIO_KEY
from selfsup.data.datamodule import EVAL_KEY
from selfsup.errors import ConfigError
from selfsup.modalities import GRID_MODALITIES, PAIRED_MODALITIES

NON_EVAL_KEYS = ("label", "index", "key", "skipped")


def first_image_field(batch: dict[str, Any]) -> torch.Tensor:
    """`image` (or `audio`: spectrograms) when present, else the first 4-D tensor of the batch (an objective's view,
    e.g. `view1`)."""
    for key in (EVAL_KEY, AUDIO_KEY):
        if key in batch:
            return batch[key]
    for name, value in batch.items():
        if name not in NON_EVAL_KEYS and isinstance(value, torch.Tensor) and value.ndim == 4:
            return value
    raise ConfigError(f"the batch has no image field (fields: {sorted(batch)}); an image backbone needs one")


def features(backbone: nn.Module, batch: dict[str, Any]) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """Pooled features (B, D) of a batch already on the backbone's device and normalised.

    Dispatches on `backbone.modality`: images (and audio, as spectrograms) take the batch's image field; text takes
    `input_ids` and `attention_mask` (the backbone pools over real tokens only); a dual encoder (an objective's
    eval model, e.g. CLIP's) takes both and gives (image or audio embeddings, text embeddings or None).
    """
    modality = getattr(backbone, "modality", "image")
    if modality in GRID_MODALITIES:
        return backbone(first_image_field(batch))
    if modality == "text":
        return backbone(batch["input_ids"], batch.get("attention_mask"))
    if modality in PAIRED_MODALITIES:
        return backbone(first_image_field(batch), batch.get("input_ids"), batch.get("attention_mask"))
    raise ConfigError(f"no feature extraction for {modality} backbones ({type(backbone).__name__})")


@dataclass
class FeatureSet:
    """Features (N, D) float32, their labels (N,) or None, and each sample's index in its split (N,); `text`: the
    embeddings (N, D) of each row's caption, where an image-text model embedded pairs."""

    features: torch.Tensor
    labels: torch.Tensor | None
    index: torch.Tensor
    text: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.features)

    def to(self, device: torch.device | str) -> "FeatureSet":
        return self.map(lambda t: t.to(device))

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "FeatureSet":
        """The same rows with `fn` applied to each tensor (features, labels, index, text)."""
        labels = fn(self.labels) if self.labels is not None else None
        text = fn(self.text) if self.text is not None else None
        return FeatureSet(fn(self.features), labels, fn(self.index), text)

    def labelled(self) -> "FeatureSet":
        """Only the samples with a label (STL-10's unlabelled images carry -1)."""
        if self.labels is None:
            raise ConfigError("these features have no labels")
        keep = self.labels >= 0
        if bool(keep.all()):
            return self
        return self.map(lambda t: t[keep])

    def subset(self, rows: torch.Tensor) -> "FeatureSet":
        return self.map(lambda t: t[rows])


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def autocast_for(device: torch.device, precision: str = "auto") -> ContextManager:
    """bf16 autocast on CUDA GPUs that have it (`auto`, `bf16`), else full precision."""
    if device.type == "cuda" and precision in ("auto", "bf16", "bf16-mixed") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def extract(backbone: nn.Module, batches: Iterable[dict[str, Any]], device: torch.device,
            prepare: Callable[[dict[str, Any]], dict[str, Any]] = lambda b: b,
            autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> FeatureSet:
    """Features of every batch, in loader order, with the backbone in eval mode (restored afterwards).

    `prepare` runs on each batch once it is on `device` (the data module's `normalize`). Features are
    returned as float32 on `device`.
    """
    was_training = backbone.training
    backbone.eval()
    feats, labels, index, texts = [], [], [], []
    try:
        for batch in batches:
            batch = prepare(to_device(batch, device))
            with autocast():
                f = features(backbone, batch)
            if isinstance(f, tuple):  # an image-text model: image embeddings and, for pairs, caption embeddings
                f, text = f
                if text is not None:
                    texts.append(text.float())
            feats.append(f.float())
            if "label" in batch:
                labels.append(batch["label"].long())
            index.append(batch["index"].long() if "index" in batch else torch.arange(len(f), device=device))
    finally:
        backbone.train(was_training)
    if not feats:
        raise ConfigError("no samples to extract features from")
    all_labels = torch.cat(labels) if len(labels) == len(feats) else None
    all_texts = torch.cat(texts) if len(texts) == len(feats) else None
    return FeatureSet(torch.cat(feats), all_labels, torch.cat(index), all_texts)


def dataset_labels(dataset: Any) -> torch.Tensor | None:
    """A dataset's labels without reading its samples, where it keeps them (`labels`, `targets`), also
    through a wrapper's `base`."""
    for obj in (dataset, getattr(dataset, "base", None)):
        for attr in ("labels", "targets"):
            values = getattr(obj, attr, None) if obj is not None else None
            if values is not None and not callable(values):
                return torch.as_tensor(values).long()
    return None


def num_classes_of(data: Any) -> int:
    """The number of classes of a labelled data module: its `num_classes` or `classes`, else the largest label
    of its training split + 1 (read from the dataset's label array, or from its samples as a last resort)."""
    n = getattr(data, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    classes = getattr(data, "classes", None)
    if classes is not None and len(classes) > 0:
        return len(classes)
    base = getattr(data, "base_sets", None)
    if base is not None and getattr(base[0], "classes", None):
        return len(base[0].classes)
    labels = dataset_labels(data.eval_dataset("train"))
    if labels is None:
        loader = data.eval_dataloader("train")
        labels = torch.cat([b["label"] for b in loader])
    return int(labels.max()) + 1
