"""The Lightning-free parts of streamed image-text data: WebDataset tar shards (img2dataset's layout) read with the
`webdataset` library, decoded into pairs and batched as equal-length epochs per rank (data/webdataset_pairs.py)."""
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
from torch.utils.data import IterableDataset, get_worker_info

from selfsup.data.decode import decode_image
from selfsup.data.image_text_datasets import Captions
from selfsup.data.sampling import READ_ERRORS
from selfsup.errors import DataError
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


def stream_layout(shards: int, samples: int, batch_size: int, workers: int, world: int) -> tuple[int, int]:
    """(data workers per process, full batches per worker) for `samples` pairs in `shards` shards read by `world`
    processes: as many full batches on every rank, and at most as many workers as each process has shards (a
    worker without one would idle)."""
    workers = max(0, min(workers, shards // world))
    per_rank = samples // (batch_size * world)
    return workers, max(1, per_rank // max(1, workers))


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
        self.views = views
        self.captions = captions
        self.channels = channels
        self.seed = seed

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
    """Collated batches from tar shards: `batches_per_worker` full batches per data worker and epoch, so every
    rank has as many. Each worker reads its share of the shards (rank r of W, worker w of K: shards r*K + w,
    r*K + w + W*K, ...) and starts over when it has read them. Training (`train=True`) shuffles the shard order
    per pass and the samples in a buffer, and continues across epochs where the last one stopped; validation
    reads the same batches in the same order every epoch. A whole pass without a readable pair is a DataError,
    never an endless loop."""

    def __init__(self, shards: list[str], decode: PairDecoder, batch_size: int,
                 collate: Callable[[list[dict[str, Any]]], dict[str, Any]], seed: int = 0,
                 shuffle_buffer: int = 0, train: bool = True) -> None:
        self.shards = shards
        self.decode = decode
        self.batch_size = batch_size
        self.collate = collate
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.train = train
        self.rank = 0
        self.world = 1
        self.workers = 1
        self.start_pass = 0
        self.batches_per_worker = 1
        self._batches: Iterator[dict[str, Any]] | None = None

    def place(self, rank: int, world: int, workers: int, batches_per_worker: int, start_pass: int = 0) -> None:
        self.rank = rank
        self.world = world
        self.workers = max(1, workers)
        self.batches_per_worker = batches_per_worker
        self.start_pass = start_pass
        self._batches = None

    def __len__(self) -> int:
        """Batches per epoch on this rank (what Lightning counts)."""
        return self.batches_per_worker * self.workers

    def my_shards(self, pass_number: int, worker: int) -> list[str]:
        order = list(self.shards)
        if self.train:  # a new shard order each pass
            random.Random(self.seed * 1_000_003 + pass_number).shuffle(order)
        return order[self.rank * self.workers + worker :: self.world * self.workers]

    def _stream(self, worker: int) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        rng = random.Random(f"{self.seed}-{self.rank}-{worker}")
        pass_number, skipped, batch = self.start_pass, 0, []
        while True:
            shards = self.my_shards(pass_number, worker)
            if not shards:
                raise DataError(f"data worker {worker} of rank {self.rank} has no shard to read; use at least "
                                f"{self.world * self.workers} shards or fewer data.num_workers")
            samples = wds.tarfile_to_samples(handler=wds.warn_and_continue)({"url": url} for url in shards)
            if self.train and self.shuffle_buffer > 1:
                samples = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer // 2, rng=rng)(samples)
            readable = 0
            for raw in samples:
                sample = self.decode(raw, pass_number)
                if sample is None:
                    skipped += 1
                    continue
                readable += 1
                sample["skipped"], skipped = skipped, 0
                batch.append(sample)
                if len(batch) == self.batch_size:
                    yield self.collate(batch)
                    batch = []
            if readable == 0:
                raise DataError(f"no readable pair in shards {', '.join(shards[:3])} ({skipped} skipped): each key "
                                f"needs an image ({', '.join(IMAGE_EXTENSIONS)}) that decodes and a .txt caption")
            pass_number += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if self._batches is None or not self.train:  # training goes on across epochs (persistent workers)
            self._batches = self._stream(worker)
        for _ in range(self.batches_per_worker):
            yield next(self._batches)


