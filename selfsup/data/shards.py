"""The Lightning-free parts of streamed image-text and audio-text data: WebDataset tar shards (img2dataset's layout;
LAION-Audio-630K's) read with the `webdataset` library, decoded into pairs and batched as equal-length epochs per
rank (data/webdataset_pairs.py)."""
from __future__ import annotations

import io
import json
import random
import sys
import tarfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from braceexpand import braceexpand
from torch.utils.data import IterableDataset, get_worker_info

from selfsup.data.decode import decode_image
from selfsup.data.image_text_datasets import Captions
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


def expected_pairs(shard: str) -> int | None:
    """The pairs img2dataset wrote to a shard (`successes` of its <shard>_stats.json), when it says."""
    stats = Path(shard[: -len(".tar")] + "_stats.json") if shard.endswith(".tar") else None
    if stats is not None and stats.is_file():
        try:
            return int(json.loads(stats.read_text())["successes"])
        except (ValueError, KeyError, TypeError, OSError):
            pass
    return None


def count_pairs(shard: str, suffixes: Sequence[str] = (".txt",)) -> int:
    """Pairs in a shard: img2dataset's <shard>_stats.json `successes`, else the members of the tar ending in one of
    `suffixes` (one per pair: the .txt captions of image shards, the sounds of audio shards; of a tar cut short,
    those before the cut: the stream reports the cut)."""
    expected = expected_pairs(shard)
    if expected is not None:
        return expected
    members = captions = 0
    try:
        with tarfile.open(shard, "r:*") as tar:
            for member in tar:
                members += 1
                captions += member.isfile() and member.name.endswith(tuple(suffixes))
    except (OSError, EOFError, tarfile.TarError) as e:
        if members == 0:
            raise DataError(f"cannot read shard {shard}: {e}; check the file or give data.num_samples") from None
    return captions


def stream_layout(shards: int, samples: int, batch_size: int, workers: int, world: int) -> tuple[int, int]:
    """(data workers per process, full batches per worker) for `samples` pairs in `shards` shards read by `world`
    processes: as many full batches on every rank, and at most as many workers as each process has shards (a
    worker without one would idle)."""
    workers = max(0, min(workers, shards // world))
    per_rank = samples // (batch_size * world)
    return workers, max(1, per_rank // max(1, workers))


def read_captions(shards: Sequence[str]) -> Iterator[str]:
    """Every caption of the shards (caption_of each key's .txt or .json member), for training a tokenizer; of a
    shard that cannot be read to its end, those before the break (reading the pairs reports it)."""
    for shard in shards:
        members: dict[str, dict[str, bytes]] = {}
        try:
            with tarfile.open(shard, "r:*") as tar:
                for member in tar:
                    key, _, ext = member.name.partition(".")
                    if member.isfile() and ext in ("txt", "json"):
                        members.setdefault(key, {})[ext] = tar.extractfile(member).read()
        except (OSError, EOFError, tarfile.TarError):
            pass
        for raw in members.values():
            caption = caption_of(raw)
            if caption is not None:
                yield caption


def caption_of(raw: dict[str, Any]) -> str | None:
    """A sample's caption: its .txt member, else the `text` (or `caption`) field of its .json (LAION-Audio-630K
    keeps a list of captions there: the first), else None."""
    if "txt" in raw:
        return raw["txt"].decode("utf-8", errors="replace")
    if "json" not in raw:
        return None
    try:
        fields = json.loads(raw["json"])
    except (ValueError, UnicodeDecodeError):
        return None
    text = fields.get("text", fields.get("caption")) if isinstance(fields, dict) else None
    if isinstance(text, list):
        text = text[0] if text else None
    return str(text) if text is not None else None


SKIPPED = "__skipped__"  # key of the marker ShardReader yields after a broken shard: the pairs it lost


def ends_cleanly(shard: str) -> bool:
    """False for a local .tar file without the end-of-archive marker (two zero blocks) at its end: it was cut.
    Python's tarfile ends a shard without an error when the cut falls in or just before a member's header, so
    this is how such a cut shows; other sources (pipes, compressed tars) are taken as complete."""
    path = Path(shard)
    if not (shard.endswith(".tar") and path.is_file()):
        return True
    size = path.stat().st_size
    if size % 512 or size < 1024:
        return False
    with path.open("rb") as f:
        f.seek(size - 1024)
        return f.read() == bytes(1024)


class ShardReader:
    """Raw samples (member bytes by extension, webdataset's tarfile_to_samples) of tar shards, one shard at a
    time, so that a shard that breaks off cannot pass a half sample on to the next. After a broken shard it
    yields a marker {SKIPPED: pairs lost}, which ShardStream counts in the next sample's `skipped`, and the first
    time (per reader, so per data worker) prints one `warning:` line on stderr naming the shard.

    A shard is broken when webdataset's handler hook reports an error (a member cut short, a file that is not a
    tar, an unreadable member) or when it is a local .tar without its end-of-archive marker (ends_cleanly). How
    many pairs it lost is known only from img2dataset's _stats.json (`successes` less the samples read): a tar
    has no index, and the member headers after a cut are gone with it, so without that file the count is 1 (the
    member being read when it broke), a lower bound; a broken shard counts 1 at least either way. Samples read
    without their image or caption (a key cut after its image) are the decoder's to count, as undecodable images
    are."""

    def __init__(self) -> None:
        self.warned: set[str] = set()

    def __call__(self, shards: Sequence[str]) -> Iterator[dict[str, Any]]:
        for url in shards:
            yield from self.shard(url)

    def shard(self, url: str) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        errors: list[Exception] = []

        def read_on(exn: Exception) -> bool:  # webdataset's handler hook: note the error and go on
            errors.append(exn)
            return True

        seen = 0
        for raw in wds.tarfile_to_samples(handler=read_on)([{"url": url}]):
            seen += 1
            yield raw
        truncated = not ends_cleanly(url)
        if errors or truncated:
            lost, message = damage(url, seen, errors[0] if errors else None, truncated)
            if url not in self.warned:
                self.warned.add(url)
                print(f"warning: {message}", file=sys.stderr, flush=True)
            yield {SKIPPED: lost}


def damage(url: str, seen: int, error: Exception | None, truncated: bool) -> tuple[int, str]:
    """(pairs lost, what to tell the user) of a broken shard that gave `seen` samples (see ShardReader)."""
    expected = expected_pairs(url)
    lost = max(1, expected - seen) if expected is not None else 1
    counted = "(counted in data/skipped_samples)"
    reason = ""
    if error is not None:
        text = str(error.args[0]).split(" @ ")[0] if error.args else str(error)  # webdataset appends " @ stream"
        reason = f"{type(error).__name__}: {text}"
    if seen == 0 and error is not None:
        return lost, f"shard {url} cannot be read ({reason}); it is skipped {counted}"
    rest = f"the rest of it ({lost} of the {expected} pairs of its _stats.json)" if expected else "the rest of it"
    if truncated:
        return lost, f"shard {url} is truncated after {seen} samples; {rest} is skipped {counted}"
    return lost, f"shard {url} breaks off after {seen} samples ({reason}); {rest} is skipped {counted}"


class PairDecoder:
    """A webdataset sample (member bytes by extension) -> our sample dict, or None when its file does not decode or
    it has no caption. `decode(bytes)`: the image or waveform of the first member with one of `extensions`,
    raising one of `errors` when it cannot."""

    def __init__(self, views: dict[str, Callable[[Any, int], torch.Tensor]], captions: Captions,
                 decode: Callable[[bytes], Any], extensions: Sequence[str], errors: tuple[type[Exception], ...],
                 seed: int) -> None:
        self.views = views
        self.captions = captions
        self.decode = decode
        self.extensions = tuple(extensions)
        self.errors = errors
        self.seed = seed

    def __call__(self, raw: dict[str, Any], epoch: int) -> dict[str, Any] | None:
        ext = next((e for e in self.extensions if e in raw), None)
        caption = caption_of(raw)
        if ext is None or caption is None:
            return None
        try:
            media = self.decode(raw[ext])
        except self.errors:
            return None
        index = zlib.crc32(str(raw["__key__"]).encode()) & 0x7FFFFFFF  # the pair's identity across passes
        key = sample_key(self.seed, epoch, index)
        sample: dict[str, Any] = {"index": index, "key": key}
        for name, view in self.views.items():
            sample[name] = view(media, key)
        sample.update(self.captions(caption))
        return sample


def image_decoder(channels: int) -> Callable[[bytes], Any]:
    """Image bytes -> a PIL image of `channels`."""
    return lambda data: decode_image(io.BytesIO(data), channels)


class ShardStream(IterableDataset):
    """Collated batches from tar shards: `batches_per_worker` full batches per data worker and epoch, so every
    rank has as many. Each worker reads its share of the shards (rank r of W, worker w of K: shards r*K + w,
    r*K + w + W*K, ...) and starts over when it has read them. Training (`train=True`) shuffles the shard order
    per pass and the samples in a buffer, and continues across epochs where the last one stopped; validation
    reads the same batches in the same order every epoch. Pairs that do not decode and those a broken shard lost
    (ShardReader) are counted in the next sample's `skipped`. A whole pass without a readable pair is a
    DataError, never an endless loop."""

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
        self.reader = ShardReader()
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
            samples = self.reader(shards)
            if self.train and self.shuffle_buffer > 1:
                samples = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer // 2, rng=rng)(samples)
            readable = 0
            for raw in samples:
                if SKIPPED in raw:  # a broken shard's lost pairs
                    skipped += raw[SKIPPED]
                    continue
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
                                f"needs a file ({', '.join(self.decode.extensions)}) that decodes and a .txt or "
                                ".json caption")
            pass_number += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if self._batches is None or not self.train:  # training goes on across epochs (persistent workers)
            self._batches = self._stream(worker)
        for _ in range(self.batches_per_worker):
            yield next(self._batches)


