"""The image data module every image source builds on: views, keyed sampling, device-side normalisation."""
from __future__ import annotations

import os
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, default_collate

from selfsup.data.augment import ViewSpec
from selfsup.data.sampling import EpochSampler, KeyedSubset, KeyedViews
from selfsup.data.views import (
    AUGMENT_ON,
    device_views,
    eval_views,
    resolve_augment_on,
    worker_batch_views,
    worker_views,
)
from selfsup.data_facts import DataFacts
from selfsup.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_KEY = "image"  # the image field of evaluation batches (kNN, probes, embeddings), whatever the objective's views
SPLITS = ("train", "val")


SUBSET_SEED = 0  # the subset is the same for every process, run and protocol


def spread_indices(size: int, max_samples: int | None) -> list[int]:
    """All indices, or a fixed random subset of `max_samples`, in index order. Random rather than every k-th:
    a stride would take only some classes of a source whose labels cycle (i % 10 takes only even classes at
    stride 2), and a random subset covers every class also when the source is sorted by class."""
    if max_samples is None or max_samples >= size:
        return list(range(size))
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    return sorted(torch.randperm(size, generator=generator)[: max(0, max_samples)].tolist())


class TensorImages(Dataset):
    """In-memory uint8 images (N, H, W) or (N, C, H, W), with integer labels or none."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.images = images if images.ndim == 4 else images.unsqueeze(1)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | None]:
        return self.images[i], (int(self.labels[i]) if self.labels is not None else None)


def default_workers() -> int:
    """Data workers per process: the CPU cores this process may use, split over local GPUs, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpus = max(1, torch.cuda.device_count())
    return max(1, min(8, cores // gpus))


class KeyedDataModule(pl.LightningDataModule):
    """What every data module shares: keyed sampling (data/sampling.py), loaders, exact mid-epoch resume.

    Subclasses implement `build_datasets()` -> (train, validation or None), datasets indexed by
    (epoch, index) that return dict samples with at least `index` and `key`, and may override
    `on_device(batch)` (training batches) and `normalize(batch)` (evaluation batches) for work done on the device.
    """

    modality: str
    name = "data"

    def __init__(self, batch_size: int = 256, num_workers: int | str = "auto", seed: int = 0,
                 val_batch_size: int | None = None, pin_memory: bool = True, on_error: str = "skip") -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be positive, got {batch_size}")
        if on_error not in ("skip", "raise"):
            raise ConfigError(f"data.on_error must be 'skip' or 'raise', got '{on_error}'")
        self.batch_size = batch_size
        self.on_error = on_error
        self.num_workers = default_workers() if num_workers == "auto" else int(num_workers)
        self.seed = seed
        self.val_batch_size = val_batch_size or batch_size
        self.pin_memory = pin_memory
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._resume: dict[str, int] | None = None
        self._count_epoch = 0  # training batches consumed in the current epoch
        self._batches_done = 0
        self.base_sets: tuple[Dataset, Dataset | None] | None = None  # sources with augmented views: their own data
        self._eval_sets: dict[str, Dataset | None] = {}  # keyed_base's

    def facts(self) -> DataFacts:
        """What the objective is told of this data (Objective.bind_data); a tokenizer is resolved here if the
        data has one, since its ids are part of the fit."""
        info = getattr(self, "tokenizer_info", None)
        return DataFacts(modality=self.modality, source=self.source, tokenizer=info,
                         tokenizer_name=str(getattr(self, "tokenizer_path", "") or ""),
                         max_length=int(getattr(self, "max_length", 0) or 0),
                         context_length=int(getattr(self, "context_length", 0) or 0),
                         next_sentence=bool(getattr(self, "next_sentence", False)),
                         image_size=getattr(self, "image_size", None), channels=getattr(self, "channels", None))

    # -- what subclasses provide -------------------------------------------------------------------------
    def build_datasets(self) -> tuple[Dataset, Dataset | None]:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Device-side work on a training batch (normalisation, GPU augmentation); by default `normalize`."""
        return self.normalize(batch)

    def normalize(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Device-side work on an evaluation batch."""
        return batch

    # -- Lightning hooks ---------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, val = self.build_datasets()
        if len(train) == 0:
            raise DataError(f"{self.name}: the training split is empty")
        self.train_set = train
        self.val_set = val if val is not None and len(val) > 0 else None

    @property
    def source(self) -> str:
        """Where the data comes from, for messages."""
        root = getattr(self, "root", None)
        return f"{self.name} ({root})" if root else self.name

    def check_before_training(self, devices: int = 1) -> None:
        """Fail early: a source with no readable sample, or a global batch larger than the training split."""
        self.setup()
        self.train_set[(0, 0)]  # raises DataError (naming the source) when no sample can be read
        need = self.batch_size * devices
        if need > len(self.train_set):
            raise ConfigError(
                f"global batch {need} (data.batch_size={self.batch_size} x {devices} devices) is larger than the "
                f"{len(self.train_set)} training samples of {self.name}; lower data.batch_size"
            )

    def compile_views(self) -> None:
        """compile=true: torch.compile what the data module runs on the device, where it has such work."""

    def log_info(self, message: str) -> None:
        """A line in the run's log, written once per job (by global rank zero)."""
        rank_zero_info(message)

    def num_train_samples(self) -> int:
        """Training samples per epoch (all processes together), which sets the steps per epoch."""
        self.setup()
        return len(self.train_set)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return default_collate(samples)

    def train_collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Training batches, in the data worker: by default `collate`."""
        return self.collate(samples)

    def _loader(self, dataset: Dataset, sampler: EpochSampler, batch_size: int, train: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.pin_memory and torch.cuda.is_available(),
                          collate_fn=self.train_collate if train else self.collate,
                          persistent_workers=self.num_workers > 0, drop_last=False,
                          prefetch_factor=4 if self.num_workers > 0 else None)

    def train_dataloader(self, max_samples: int | None = None) -> DataLoader:
        """Training batches; `max_samples`: of a fixed subset of the split (spread_indices), for evaluation
        protocols that train on a capped split (fine-tuning, LoRA)."""
        self.setup()
        dataset = self.train_set
        if max_samples is not None and max_samples < len(dataset):
            dataset = KeyedSubset(dataset, spread_indices(len(dataset), max_samples))
        sampler = EpochSampler(len(dataset), self.batch_size, self.seed, shuffle=True, drop_last=True)
        if self._resume:
            epoch, done = self._resume["epoch"], self._resume["batches_done"]
            if done >= len(sampler) // self.batch_size:  # saved at the end of an epoch: start the next
                epoch, done = epoch + 1, 0
            sampler.resume(epoch, done)
            self._count_epoch = epoch
            self._batches_done = done
        return self._loader(dataset, sampler, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        if self.val_set is None:
            return []
        sampler = EpochSampler(len(self.val_set), self.val_batch_size, self.seed, shuffle=False, drop_last=False)
        return self._loader(self.val_set, sampler, self.val_batch_size)

    # -- evaluation: deterministic samples with labels, for online monitors, probes and embeddings ------------
    def eval_dataset(self, split: str) -> Dataset | None:
        """`split` ('train' or 'val') as evaluation sees it: no augmentation, labels where the source has them.
        Text samples are already deterministic; image modules override this with resize + centre-crop views."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split '{split}'; choose one of {SPLITS}")
        self.setup()
        return self.train_set if split == "train" else self.val_set

    def keyed_base(self, split: str, views: dict[str, Any]) -> Dataset | None:
        """`split` of the source's own datasets (`base_sets`, set by build_datasets) with deterministic `views`, made
        once: the evaluation datasets of modules whose training views are augmented (images, audio)."""
        KeyedDataModule.eval_dataset(self, split)  # checks the split, builds the datasets
        if split not in self._eval_sets:
            base = self.base_sets[0 if split == "train" else 1]
            self._eval_sets[split] = None if base is None or len(base) == 0 else KeyedViews(
                base, views, self.seed, self.on_error, self.source)
        return self._eval_sets[split]

    def has_labels(self) -> bool:
        """Whether samples carry a `label` (what kNN, probes and fine-tuning need)."""
        return "label" in self.eval_dataset("train")[(0, 0)]

    def eval_dataloader(self, split: str, max_samples: int | None = None, batch_size: int | None = None,
                        indices: list[int] | None = None) -> DataLoader | None:
        """Batches of `split` in index order: all of it, an evenly spread subset of `max_samples`, or `indices`.
        None when the split does not exist. Batches still need `normalize` once on the device."""
        dataset = self.eval_dataset(split)
        if dataset is None:
            return None
        chosen = spread_indices(len(dataset), max_samples) if indices is None else indices
        # Its own generator: iterating must not draw from the global RNG that training uses.
        return DataLoader(dataset, batch_size=batch_size or self.val_batch_size, sampler=[(0, i) for i in chosen],
                          num_workers=self.num_workers, collate_fn=self.collate, generator=torch.Generator(),
                          pin_memory=self.pin_memory and torch.cuda.is_available())

    def preview_batch(self, n: int) -> dict[str, Any]:
        """The first n samples of the validation split (else the training split), collated, not yet on the device."""
        self.setup()
        dataset, collate = (self.val_set, self.collate) if self.val_set is not None else (self.train_set,
                                                                                          self.train_collate)
        return collate([dataset[(0, i)] for i in range(min(n, len(dataset)))])

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Device-side work, and counting training batches for exact resume."""
        if self.trainer is not None and self.trainer.training:
            if self.trainer.current_epoch != self._count_epoch:
                self._count_epoch = self.trainer.current_epoch
                self._batches_done = 0
            self._batches_done += 1
            return self.on_device(batch)
        return self.normalize(batch)

    # -- exact resume: Lightning saves and restores these with each checkpoint ---------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._count_epoch, "batches_done": self._batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state)


class ImageDataModule(KeyedDataModule):
    """Subclasses implement `load()` -> (train dataset, validation dataset or None) of (image, label) pairs.

    Batches are dicts: one field per view of the objective (uint8 from the workers; normalised floats once on
    the device), `label` where the source has labels, `index`, `key` (the sample's randomness key) and
    `skipped`. `augment_on` says where views are made (data/views.py). Subclasses whose images all have one
    size set `same_size_source = True`, so that in GPU mode the workers need not even crop.
    """

    modality = "image"
    name = "images"
    same_size_source = False

    def __init__(self, batch_size: int = 256, image_size: int = 224, channels: int = 3,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 views: list[dict[str, Any]] | None = None, augment_on: str = "auto", **kwargs: Any) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        self.image_size = image_size
        self.channels = channels
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"data.mean and data.std need {channels} values (data.channels), got {len(mean)}, "
                              f"{len(std)}")
        if augment_on not in AUGMENT_ON:
            raise ConfigError(f"data.augment_on must be one of {AUGMENT_ON}, got '{augment_on}'")
        self.augment_on = resolve_augment_on(augment_on)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self._stats_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._device_views = device_views
        self.views = [ViewSpec.parse(v) for v in (views or [{"key": "image"}])]

    def load(self) -> tuple[Dataset, Dataset | None]:  # pragma: no cover - abstract
        raise NotImplementedError

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        train, val = self.load()
        self.base_sets = (train, val)
        views = worker_views(self.views, self.image_size, self.augment_on, self.same_size_source, batched=True)
        train_set = KeyedViews(train, views, self.seed, self.on_error, self.source)
        val_set = None
        if val is not None and len(val) > 0:
            val_set = KeyedViews(val, eval_views(self.views, self.image_size), self.seed, self.on_error, self.source)
        return train_set, val_set

    def eval_dataset(self, split: str) -> Dataset | None:
        """The source's images as one `image` field, resized and centre-cropped (eval views), with labels."""
        return self.keyed_base(split, eval_views([ViewSpec(key=EVAL_KEY)], self.image_size))

    def class_names(self) -> list[str] | None:
        """The label names in label order, where the source has them (what zero-shot prompts are made of)."""
        self.setup()
        names = getattr(self, "classes", None) or getattr(self.base_sets[0], "classes", None)
        return [str(n) for n in names] if names else None

    def train_collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """CPU mode: the worker finishes every view on the collated batch (views.worker_batch_views)."""
        batch = self.collate(samples)
        return worker_batch_views(batch, self.views, self.image_size) if self.augment_on == "cpu" else batch

    def on_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Training batches: make the views here in GPU mode, then normalise."""
        if self.augment_on == "gpu":
            batch = self._device_views(batch, self.views, self.image_size)
        return self.normalize(batch)

    def compile_views(self) -> None:
        """torch.compile the GPU-mode views: the per-sample crops, jitter, blur and solarize fuse into fewer
        kernels. (On the CPU, eager views run cpu_views.c, which is faster than the compiled tensor route.)"""
        if self.augment_on == "gpu":
            self._device_views = torch.compile(device_views, dynamic=False)

    def normalize(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Views to normalised floats on the device: uint8 (0-255) from the workers, or floats in [0, 1]."""
        for key in dict.fromkeys([*(spec.key for spec in self.views), EVAL_KEY]):  # evaluation batches: `image`
            if key not in batch:
                continue
            images = batch[key]
            x = images.float() / 255.0 if images.dtype == torch.uint8 else images
            mean, std = self.stats_on(x.device)
            batch[key] = (x - mean) / std
        return batch

    def input_settings(self) -> dict[str, Any]:
        """What another image data module needs to give a backbone trained on this one the same input."""
        return {"image_size": self.image_size, "channels": self.channels, "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist()}

    def stats_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std on `device`, copied there once: a copy from pageable host memory waits for the GPU."""
        if device not in self._stats_on:
            self._stats_on[device] = (self.mean.to(device), self.std.to(device))
        return self._stats_on[device]
