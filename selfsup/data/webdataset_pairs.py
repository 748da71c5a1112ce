"""Image-text and audio-text pairs streamed from WebDataset tar shards. Images in the layout img2dataset writes: per
key, an image (KEY.jpg, .jpeg, .png or .webp) and its caption (KEY.txt; other members such as .json are ignored).
Audio in LAION-Audio-630K's: per key, a sound (KEY.flac, .wav, .mp3 or .ogg) and its caption (KEY.txt, else the
`text` field of KEY.json).

Reading and grouping tar members is the `webdataset` library's (tarfile_to_samples, shuffle). Around it:
- Training streams the shards endlessly. Each pass over them is shuffled by (seed, pass); rank r of W with data
  worker w of K reads shards r*K + w, r*K + w + W*K, ... of that order; samples are shuffled in a buffer. Every
  epoch is the same number of batches on every rank (so DDP ranks never wait on one another).
- An image that does not decode, or a key without its image or caption, is skipped and counted in the next
  sample's `skipped` (data/skipped_samples in the logs). So are the pairs a broken shard (cut short, not a tar,
  an unreadable member) lost; such a shard is named in one `warning:` line and the reader goes on to the next.
- Validation reads the same full batches of `val_urls` every epoch, as many on every rank (the CLIP loss gathers
  across ranks, so uneven batches would hang DDP).
- The samples per epoch are `num_samples`, else the `successes` of img2dataset's *_stats.json files, else the
  captions counted in the shards' tar headers.
- Resume restarts the stream at the pass of the resumed epoch, not at the exact sample (map-style sources such
  as manifests resume exactly). A pass over a worker's shards without one readable pair is a DataError.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, default_collate

from selfsup.data.audio import Clip
from selfsup.data.audio_signal import read_audio
from selfsup.data.audio_text import AudioTextDataModule
from selfsup.data.image_text import ImageTextDataModule
from selfsup.data.sampling import READ_ERRORS
from selfsup.data.shards import (
    IMAGE_EXTENSIONS,
    SKIPPED,
    PairDecoder,
    ShardStream,
    count_pairs,
    expand_urls,
    image_decoder,
    read_captions,
    stream_layout,
)
from selfsup.data.text_datasets import file_identity
from selfsup.data.views import eval_views, worker_views
from selfsup.errors import ConfigError, DataError

AUDIO_MEMBERS = ("flac", "wav", "mp3", "ogg")


class ShardPairs:
    """Pairs in WebDataset shards: data.urls (brace pattern, list, or folder of .tar), data.val_urls. Mixed into a
    paired data module, which gives `decoder(train)`, its PairDecoder for training or evaluation views, and
    `pair_members`, the member extensions that count one pair each."""

    name = "webdataset"
    pair_members: tuple[str, ...] = (".txt",)

    def __init__(self, urls: str | Sequence[str] | None = None, val_urls: str | Sequence[str] | None = None,
                 num_samples: int | None = None, shuffle_buffer: int = 2000, **kwargs: Any) -> None:
        super().__init__(val_fraction=0.0, **kwargs)
        self.train_shards = expand_urls(urls)
        self.val_shards = expand_urls(val_urls)
        self.urls = urls
        self.num_samples = num_samples
        self.shuffle_buffer = shuffle_buffer
        self.val_samples = 0
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

    def decoder(self, train: bool) -> PairDecoder:  # pragma: no cover - abstract
        raise NotImplementedError

    def build_datasets(self) -> tuple[ShardStream, ShardStream | None]:
        self.check_shards()
        make = lambda shards, train: ShardStream(  # noqa: E731
            shards, self.decoder(train), self.batch_size, default_collate, self.seed, self.shuffle_buffer, train)
        train = make(self.train_shards, True)
        val = make(self.val_shards, False) if self.val_shards else None
        if self.num_samples is None:
            self.num_samples = sum(count_pairs(s, self.pair_members) for s in self.train_shards)
        self.val_samples = sum(count_pairs(s, self.pair_members) for s in self.val_shards)
        return train, val

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self.build_datasets()

    # -- epochs of equal length on every rank ------------------------------------------------------------------
    def layout(self, stream: ShardStream, samples: int, world: int) -> tuple[int, int]:
        """(data workers, batches per worker) of a stream of `samples` read by `world` processes."""
        return stream_layout(len(stream.shards), samples, self.batch_size, self.num_workers, world)

    def num_train_samples(self) -> int:
        self.setup()
        workers, per_worker = self.layout(self.train_set, self.num_samples, self.world)
        return per_worker * max(1, workers) * self.batch_size * self.world

    def check_before_training(self, devices: int = 1) -> None:
        """Enough shards for every process, a batch the data can fill, and one pair that decodes."""
        self.setup()
        for kind, shards in (("training", self.train_shards), ("validation", self.val_shards)):
            if shards and len(shards) < devices:
                raise DataError(f"{len(shards)} {kind} shards cannot feed {devices} processes; each needs one at "
                                "least (split the data into more shards)")
        if self.num_samples < self.batch_size * devices:
            raise ConfigError(f"global batch {self.batch_size * devices} is larger than the {self.num_samples} "
                              f"training pairs of {self.source}; lower data.batch_size")
        self.first_pair()
        self.world = devices
        workers, _ = self.layout(self.train_set, self.num_samples, devices)
        if workers < self.num_workers:
            self.log_info(f"webdataset: {workers} data workers per process (at most one per shard)")

    def first_pair(self) -> dict[str, Any]:
        """The first readable pair of the first shard, else a DataError naming the shard."""
        shard = self.train_shards[0]
        for count, raw in enumerate(self.train_set.reader([shard])):
            sample = None if SKIPPED in raw else self.train_set.decode(raw, 0)
            if sample is not None:
                return sample
            if count >= 64:
                break
        raise DataError(f"no readable pair at the start of {shard}: each key needs a file "
                        f"({', '.join(self.train_set.decode.extensions)}) that decodes and a .txt caption")

    def _stream_loader(self, stream: ShardStream, samples: int, world: int, rank: int, start_pass: int = 0
                       ) -> DataLoader:
        workers, per_worker = self.layout(stream, samples, world)
        stream.place(rank, world, workers, per_worker, start_pass)
        return DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=self.pin_memory and torch.cuda.is_available(),
                          prefetch_factor=4 if workers > 0 else None)

    def rank_world(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, self.world)

    def train_dataloader(self) -> DataLoader:
        """Resuming starts the stream at the pass of the interrupted epoch (the next one after an epoch's end)."""
        self.setup()
        rank, world = self.rank_world()
        start = 0
        if self._resume:
            workers, per_worker = self.layout(self.train_set, self.num_samples, world)
            finished = self._resume["batches_done"] >= per_worker * max(1, workers)
            start = self._resume["epoch"] + (1 if finished else 0)
        return self._stream_loader(self.train_set, self.num_samples, world, rank, start)

    def val_dataloader(self) -> DataLoader | list:
        """The same full batches every epoch, as many on every rank (a rank short of pairs reads some twice)."""
        self.setup()
        if self.val_set is None:
            return []
        rank, world = self.rank_world()
        return self._stream_loader(self.val_set, self.val_samples, world, rank)

    def has_labels(self) -> bool:
        return False

    def eval_dataset(self, split: str) -> None:
        """Streams have no random access: online kNN and probes are off; zero-shot and retrieval read map-style
        data (eval.py data=...)."""
        return None


class WebDatasetPairs(ShardPairs, ImageTextDataModule):
    """Image-text pairs in WebDataset shards (img2dataset's layout)."""

    name = "webdataset"

    def decoder(self, train: bool) -> PairDecoder:
        views = (worker_views(self.views, self.image_size, self.augment_on, same_size_source=False) if train
                 else eval_views(self.views, self.image_size))
        return PairDecoder(views, self.captions(), image_decoder(self.channels), IMAGE_EXTENSIONS, READ_ERRORS,
                           self.seed)


class AudioWebDataset(ShardPairs, AudioTextDataModule):
    """Audio-text pairs in WebDataset shards (LAION-Audio-630K's layout): one sound member per pair."""

    name = "audio_webdataset"
    pair_members = tuple(f".{ext}" for ext in AUDIO_MEMBERS)

    def decoder(self, train: bool) -> PairDecoder:
        random_crop = train and self.augment.random_crop
        views = {key: Clip(self.length, n, random_crop) for n, key in enumerate(self.view_keys)}
        return PairDecoder(views, self.captions(), lambda data: read_audio(data, self.sample_rate), AUDIO_MEMBERS,
                           (DataError,), self.seed)
