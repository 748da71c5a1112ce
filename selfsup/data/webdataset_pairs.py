"""Image-text pairs streamed from WebDataset tar shards, in the layout img2dataset writes: per key, an image
(KEY.jpg, .jpeg, .png or .webp) and its caption (KEY.txt); other members (.json) are ignored.

Reading and grouping tar members is the `webdataset` library's (tarfile_to_samples, shuffle). Around it:
- Training streams the shards endlessly. Each pass over them is shuffled by (seed, pass); rank r of W with data
  worker w of K reads shards r*K + w, r*K + w + W*K, ... of that order; samples are shuffled in a buffer. Every
  epoch is the same number of batches on every rank (so DDP ranks never wait on one another).
- An image that does not decode is skipped and counted in the next sample's `skipped` (data/skipped_samples in
  the logs); a damaged tar stream is reported and the reader goes on to the next shard.
- Validation reads `val_urls` once per epoch, each rank its share.
- The samples per epoch are `num_samples`, else the `successes` of img2dataset's *_stats.json files, else the
  captions counted in the shards' tar headers.
- Resume restarts the stream at the pass of the resumed epoch, not at the exact sample (map-style sources such
  as manifests resume exactly).
"""
from __future__ import annotations

import io
import json
import random
import tarfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from braceexpand import braceexpand
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from selfsup.data.image_folder import decode_image
from selfsup.data.image_text import Captions, ImageTextDataModule
from selfsup.data.sampling import READ_ERRORS
from selfsup.data.text_datasets import file_identity
from selfsup.data.views import eval_views, worker_views
from selfsup.errors import ConfigError, DataError
from selfsup.keyed_random import sample_key

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def expand_urls(urls: str | Sequence[str] | None) -> list[str]:
    """Shard paths from brace patterns ("/data/{00000..00099}.tar"), a list of them, or a folder of .tar files."""
    if not urls:
        return []
    out: list[str] = []
    for pattern in [urls] if isinstance(urls, str) else list(urls):
        folder = Path(str(pattern)).expanduser()
        out += sorted(map(str, folder.glob("*.tar"))) if folder.is_dir() else list(braceexpand(str(folder)))
    return out


def count_pairs(shard: str) -> int:
    """Pairs in a shard: img2dataset's <shard>_stats.json `successes`, else the .txt members of the tar."""
    stats = Path(shard[: -len(".tar")] + "_stats.json") if shard.endswith(".tar") else None
    if stats is not None and stats.is_file():
        try:
            return int(json.loads(stats.read_text())["successes"])
        except (ValueError, KeyError, OSError):
            pass
    try:
        with tarfile.open(shard, "r:*") as tar:
            return sum(1 for m in tar if m.isfile() and m.name.endswith(".txt"))
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"cannot read shard {shard}: {e}; check the file or give data.num_samples") from None


def read_captions(shards: Sequence[str]) -> Iterator[str]:
    """Every caption of the shards (the .txt members), for training a tokenizer."""
    for shard in shards:
        with tarfile.open(shard, "r:*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".txt"):
                    yield tar.extractfile(member).read().decode("utf-8", errors="replace")


class PairDecoder:
    """A webdataset sample (member bytes by extension) -> our sample dict, or None when its image is unreadable."""

    def __init__(self, views: dict[str, Callable[[Any, int], torch.Tensor]], captions: Captions, channels: int,
                 seed: int) -> None:
        self.views, self.captions, self.channels, self.seed = views, captions, channels, seed

    def __call__(self, raw: dict[str, Any], epoch: int) -> dict[str, Any] | None:
        ext = next((e for e in IMAGE_EXTENSIONS if e in raw), None)
        if ext is None or "txt" not in raw:
            return None
        try:
            image = decode_image(io.BytesIO(raw[ext]), self.channels)
        except READ_ERRORS:
            return None
        index = zlib.crc32(str(raw["__key__"]).encode()) & 0x7FFFFFFF  # the pair's identity across passes
        key = sample_key(self.seed, epoch, index)
        sample: dict[str, Any] = {"index": index, "key": key}
        for name, view in self.views.items():
            sample[name] = view(image, key)
        sample.update(self.captions(raw["txt"].decode("utf-8", errors="replace")))
        return sample


class ShardStream(IterableDataset):
    """Collated batches from tar shards. `batches_per_worker` set: endless passes, that many batches per worker
    and epoch, continuing where the last epoch stopped. None: one pass, all of it (validation)."""

    def __init__(self, shards: list[str], decode: PairDecoder, batch_size: int,
                 collate: Callable[[list[dict[str, Any]]], dict[str, Any]], seed: int = 0,
                 shuffle_buffer: int = 0) -> None:
        self.shards, self.decode, self.batch_size, self.collate = shards, decode, batch_size, collate
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.rank, self.world, self.workers, self.start_pass = 0, 1, 1, 0
        self.batches_per_worker: int | None = None
        self._batches: Iterator[dict[str, Any]] | None = None

    def place(self, rank: int, world: int, workers: int, batches_per_worker: int | None, start_pass: int = 0) -> None:
        self.rank, self.world, self.workers = rank, world, max(1, workers)
        self.batches_per_worker, self.start_pass = batches_per_worker, start_pass
        self._batches = None

    def __len__(self) -> int:
        """Batches per epoch on this rank (what Lightning counts); a single pass has no length known up front."""
        if self.batches_per_worker is None:
            raise TypeError("a single pass over shards has no length")
        return self.batches_per_worker * self.workers

    def my_shards(self, pass_number: int, worker: int) -> list[str]:
        order = list(self.shards)
        if self.batches_per_worker is not None:  # training: a new shard order each pass
            random.Random(self.seed * 1_000_003 + pass_number).shuffle(order)
        return order[self.rank * self.workers + worker :: self.world * self.workers]

    def _stream(self, worker: int) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        endless = self.batches_per_worker is not None
        rng = random.Random(f"{self.seed}-{self.rank}-{worker}")
        pass_number, skipped, batch = self.start_pass, 0, []
        while True:
            shards = self.my_shards(pass_number, worker)
            if not shards:
                if endless:
                    raise DataError(f"data worker {worker} of rank {self.rank} has no shard to read; use at least "
                                    f"{self.world * self.workers} shards or fewer data.num_workers")
                return
            samples = wds.tarfile_to_samples(handler=wds.warn_and_continue)({"url": url} for url in shards)
            if endless and self.shuffle_buffer > 1:
                samples = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer // 2, rng=rng)(samples)
            for raw in samples:
                sample = self.decode(raw, pass_number)
                if sample is None:
                    skipped += 1
                    continue
                sample["skipped"], skipped = skipped, 0
                batch.append(sample)
                if len(batch) == self.batch_size:
                    yield self.collate(batch)
                    batch = []
            if not endless:
                if batch:
                    yield self.collate(batch)
                return
            pass_number += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if self.batches_per_worker is None:
            yield from self._stream(worker)
            return
        if self._batches is None:  # kept across epochs (persistent workers): the stream goes on
            self._batches = self._stream(worker)
        for _ in range(self.batches_per_worker):
            yield next(self._batches)


class WebDatasetPairs(ImageTextDataModule):
    """Image-text pairs in WebDataset shards: data.urls (brace pattern, list, or folder of .tar), data.val_urls."""

    name = "webdataset"

    def __init__(self, urls: str | Sequence[str] | None = None, val_urls: str | Sequence[str] | None = None,
                 num_samples: int | None = None, shuffle_buffer: int = 2000, **kwargs: Any) -> None:
        super().__init__(val_fraction=0.0, **kwargs)
        self.train_shards, self.val_shards = expand_urls(urls), expand_urls(val_urls)
        self.urls, self.num_samples, self.shuffle_buffer = urls, num_samples, shuffle_buffer
        self.world = 1

    @property
    def source(self) -> str:
        return f"{self.name} ({self.urls})"

    def check_shards(self) -> None:
        if not self.train_shards:
            raise ConfigError("data=webdataset needs data.urls: shard paths such as /data/{00000..00099}.tar, "
                              "a list of them, or a folder of .tar files")
        missing = [s for s in self.train_shards + self.val_shards if not Path(s).is_file()]
        if missing:
            raise DataError(f"shard {missing[0]} does not exist ({len(missing)} missing); check data.urls / "
                            "data.val_urls")

    def identity(self) -> Any:
        return {"shards": file_identity(Path(s) for s in self.train_shards)}

    def tokenizer_corpus(self) -> tuple[Any, Any, None]:
        self.check_shards()
        return {"pairs": self.identity()}, lambda: read_captions(self.train_shards), None

    def class_names(self) -> list[str] | None:
        return None

    def build_datasets(self) -> tuple[ShardStream, ShardStream | None]:
        self.check_shards()
        captions = self.captions()
        train_views = worker_views(self.views, self.image_size, self.augment_on, same_size_source=False)
        make = lambda shards, views: ShardStream(  # noqa: E731
            shards, PairDecoder(views, captions, self.channels, self.seed), self.batch_size, default_collate,
            self.seed, self.shuffle_buffer)
        train = make(self.train_shards, train_views)
        val = make(self.val_shards, eval_views(self.views, self.image_size)) if self.val_shards else None
        if self.num_samples is None:
            self.num_samples = sum(count_pairs(s) for s in self.train_shards)
        return train, val

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self.build_datasets()

    # -- epochs of equal length on every rank ------------------------------------------------------------------
    def workers_for(self, world: int) -> int:
        """Data workers per process: at most the shards each process has (a worker without one would idle)."""
        return max(0, min(self.num_workers, len(self.train_shards) // world))

    def batches_per_worker(self, world: int) -> int:
        per_rank = self.num_samples // (self.batch_size * world)
        return max(1, per_rank // max(1, self.workers_for(world)))

    def num_train_samples(self) -> int:
        self.setup()
        workers = max(1, self.workers_for(self.world))
        return self.batches_per_worker(self.world) * workers * self.batch_size * self.world

    def check_before_training(self, devices: int = 1) -> None:
        self.setup()
        if len(self.train_shards) < devices:
            raise DataError(f"{len(self.train_shards)} shards cannot feed {devices} processes; each needs one at "
                            "least (split the data into more shards)")
        if self.num_samples < self.batch_size * devices:
            raise ConfigError(f"global batch {self.batch_size * devices} is larger than the {self.num_samples} "
                              f"training pairs of {self.source}; lower data.batch_size")
        self.world = devices
        if self.workers_for(devices) < self.num_workers:
            rank_zero_info(f"webdataset: {self.workers_for(devices)} data workers per process (one per shard)")

    def _stream_loader(self, stream: ShardStream, workers: int) -> DataLoader:
        return DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=self.pin_memory and torch.cuda.is_available(),
                          prefetch_factor=4 if workers > 0 else None)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, self.world)
        workers = self.workers_for(world)
        start = self._resume["epoch"] if self._resume else 0
        self.train_set.place(rank, world, workers, self.batches_per_worker(world), start_pass=start)
        return self._stream_loader(self.train_set, workers)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        if self.val_set is None:
            return []
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        workers = max(0, min(self.num_workers, len(self.val_shards) // world))
        self.val_set.place(rank, world, workers, None)
        return self._stream_loader(self.val_set, workers)

    def has_labels(self) -> bool:
        return False

    def eval_dataset(self, split: str) -> None:
        """Streams have no random access: online kNN and probes are off; zero-shot and retrieval read map-style
        data (eval.py data=...)."""
        return None
