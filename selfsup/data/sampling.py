"""Sampling that is resumable mid-epoch and identical for any number of processes.

Each epoch's order is a permutation drawn from (seed, epoch). Rank r of W takes every W-th index, so
batch i of all ranks together is batch i of a single process with W times the batch. The sampler yields
(epoch, index) pairs, so each sample's augmentation can be keyed by both (see keyed_random).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from PIL.Image import DecompressionBombError
from torch.utils.data import Dataset, Sampler

from selfsup.errors import DataError
from selfsup.keyed_random import sample_key


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields (epoch, index) for this rank; `skip_batches` drops the batches a resumed run already trained on."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = True,
                 rank: int | None = None, world_size: int | None = None) -> None:
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self._rank = rank
        self._world = world_size
        self.epoch = 0
        self.skip_batches = 0

    @property
    def rank_world(self) -> tuple[int, int]:
        rank, world_size = world()
        return (self._rank if self._rank is not None else rank), (self._world or world_size)

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch start; a new epoch forgets a pending resume skip."""
        if epoch != self.epoch:
            self.skip_batches = 0
        self.epoch = epoch

    def resume(self, epoch: int, batches_done: int) -> None:
        self.epoch = epoch
        self.skip_batches = batches_done

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def _per_rank(self) -> int:
        world_size = self.rank_world[1]
        if not self.drop_last:
            return -(-self.size // world_size)
        return self.size // world_size // self.batch_size * self.batch_size

    def _rank_indices(self) -> list[int]:
        rank, world_size = self.rank_world
        indices = self._indices()
        per_rank = self._per_rank()
        if not self.drop_last:  # pad by wrapping so that every rank has the same number of samples
            indices += indices[: per_rank * world_size - len(indices)]
        return indices[rank : per_rank * world_size : world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for i in self._rank_indices()[self.skip_batches * self.batch_size :]:
            yield epoch, i

    def __len__(self) -> int:
        """The whole epoch's length, also while skipping: Lightning counts a resumed epoch's batches from
        the restored position to this length."""
        return self._per_rank()


READ_ERRORS = (OSError, ValueError, SyntaxError, DecompressionBombError)  # PIL: truncated, empty, non-image, huge
MAX_SUBSTITUTES = 64


def describe(dataset: Dataset, index: int) -> str:
    """A sample's file path where the dataset knows it (ImageFolder), else its index."""
    samples = getattr(dataset, "samples", None)
    return str(samples[index][0]) if samples is not None else f"sample {index}"


class KeyedSubset(Dataset):
    """The samples `indices` of a dataset indexed by (epoch, index), renumbered 0..n-1 for the sampler; each sample
    keeps its own `index` and key, so it looks as it does in the whole split."""

    def __init__(self, base: Dataset, indices: list[int]) -> None:
        self.base = base
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        epoch, i = item
        return self.base[(epoch, self.indices[i])]


class KeyedViews(Dataset):
    """Wraps a dataset of (image, label) into dict samples: one field per view, `label`, `index`, `key`, `skipped`.
    A dict in place of the label adds its fields (image-text pairs: `input_ids`, `attention_mask`, `label`).

    Each view is a function of the image and the sample's key (data/augment.py), so a sample looks the same
    whatever worker, rank or resumed run produces it. An unreadable sample is, with on_error="skip", replaced
    by the next readable one and counted in `skipped` (the batch keeps its size); with on_error="raise" it
    stops the run with a DataError naming the file.
    """

    def __init__(self, base: Dataset, views: dict[str, Callable[[Any, int], torch.Tensor]], seed: int = 0,
                 on_error: str = "skip", source: str = "the dataset") -> None:
        self.base = base
        self.views = views
        self.seed = seed
        self.on_error = on_error
        self.source = source

    def __len__(self) -> int:
        return len(self.base)

    def _read(self, index: int) -> tuple[object, object, int]:
        """(image, label, number of unreadable samples passed over) for `index` or the next readable one."""
        for skipped in range(min(MAX_SUBSTITUTES, len(self.base))):
            j = (index + skipped) % len(self.base)
            try:
                image, label = self.base[j]
                return image, label, skipped
            except READ_ERRORS as e:
                if self.on_error == "raise":
                    raise DataError(f"cannot read {describe(self.base, j)}: {e}; fix or remove it, "
                                    "or set data.on_error=skip") from None
        raise DataError(f"no readable sample in {self.source} (tried {min(MAX_SUBSTITUTES, len(self.base))} files "
                        f"from {describe(self.base, index)} on); check the files there")

    def __getitem__(self, item: tuple[int, int] | int) -> dict[str, object]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        image, label, skipped = self._read(index)
        key = sample_key(self.seed, epoch, index)
        sample: dict[str, object] = {"index": index, "key": key, "skipped": skipped}
        for name, view in self.views.items():
            sample[name] = view(image, key)
        if isinstance(label, dict):  # image-text sources: caption tokens, and a label where there is one
            sample.update(label)
        elif label is not None:
            sample["label"] = label
        return sample
