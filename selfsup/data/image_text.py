"""Image-text pairs for CLIP from a manifest: a CSV, TSV or JSONL file of image path + caption (+ optional label).

Batches hold the image view(s) of the objective (uint8 from the workers, normalised on the device, as for any
image data), `input_ids` and `attention_mask` of the caption ([CLS] caption [SEP], truncated or padded to
`context_length` tokens), `label` where the manifest has a label column, `index`, `key` and `skipped` (an
unreadable image is replaced by the next readable pair and counted, with data.on_error=skip).

The tokenizer is data.tokenizer.path, else a WordPiece vocabulary trained once on the training captions and
cached (data/tokenizer.py), as for text data.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from selfsup.console import note
from selfsup.data.datamodule import ImageDataModule
from selfsup.data.image_text_datasets import Captions, PairFiles, Pairs, read_manifest
from selfsup.data.text_datasets import file_identity, holdout
from selfsup.data.tokenizer import Tokenized, tokenizer_settings
from selfsup.errors import ConfigError, DataError


class CaptionedPairs(Tokenized):
    """What image-text and audio-text data share: pairs of a file and its caption, their split, class names, the
    caption tokenizer and fixed-length captions. Mixed into a data module of the paired modality (ImageTextDataModule
    below, data/audio_text.py), which turns the pairs into datasets (`load`).

    Subclasses implement `read_pairs()` -> (training pairs, validation pairs or None) and `identity()` (what names
    the captions for the tokenizer cache). Without validation pairs, `val_fraction` of the pairs are held out by a
    hash of the file's name (the same split on every run and machine)."""

    source: str

    def __init__(self, tokenizer: Mapping[str, Any] | None = None, context_length: int = 77,
                 val_fraction: float = 0.02, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if context_length < 4:
            raise ConfigError(f"data.context_length must be at least 4, got {context_length}")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must lie in [0, 1), got {val_fraction}")
        self.tokenizer_cfg = tokenizer_settings(dict(tokenizer) if tokenizer is not None else None)
        self.context_length = context_length
        self.val_fraction = val_fraction
        self._splits: tuple[Pairs, Pairs] | None = None

    # -- what subclasses provide -------------------------------------------------------------------------
    def read_pairs(self) -> tuple[Pairs, Pairs | None]:  # pragma: no cover - abstract
        raise NotImplementedError

    def identity(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- pairs, classes and tokenizer, each built once ----------------------------------------------------
    def splits(self) -> tuple[Pairs, Pairs]:
        if self._splits is None:
            train, val = self.read_pairs()
            if len(train) == 0:
                raise DataError(f"{self.source} holds no {self.modality} pairs; check the manifest")
            if val is None:
                held = holdout(train.names or train.paths, self.val_fraction)
                if self.val_fraction > 0 and not held.any():
                    note(f"{self.source}: data.val_fraction={self.val_fraction} holds out none of its {len(train)} "
                         "pairs, so the run has no validation (set data.val_manifest, or a larger data.val_fraction)")
                train, val = train.select(~held), train.select(held)
            self._splits = (train, val)
        return self._splits

    def class_names(self) -> list[str] | None:
        """The label names in index order (sorted), or None when the pairs have no labels."""
        train, val = self.splits()
        if train.labels is None:
            return None
        return sorted(set(train.labels) | set(val.labels or ()))

    def tokenizer_corpus(self) -> tuple[Any, Any, int]:
        """The training captions."""
        captions = self.splits()[0].captions
        return {"pairs": self.identity(), "val_fraction": self.val_fraction}, lambda: iter(captions), len(captions)

    def media_identity(self, path: str) -> str:
        """What makes two rows the same image (or sound) for retrieval: the path (sources with copies override this)."""
        return path

    def pair_ids(self, split: str, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Media and caption ids of rows `index` of `split`: rows sharing a file (or a caption) share its id."""
        pairs = self.splits()[0 if split == "train" else 1]
        rows = index.tolist()
        images = [self.media_identity(pairs.paths[i]) for i in rows]
        texts = [pairs.captions[i] for i in rows]
        number = lambda values: {v: n for n, v in enumerate(dict.fromkeys(values))}  # noqa: E731
        image_number, text_number = number(images), number(texts)
        return (torch.tensor([image_number[v] for v in images], device=index.device),
                torch.tensor([text_number[v] for v in texts], device=index.device))

    def captions(self) -> Captions:
        return Captions(self.tokenizer, self.tokenizer_info, self.context_length)


class ImageTextDataModule(CaptionedPairs, ImageDataModule):
    """Image-text pairs: each pair's image as the objective's view(s), its caption as token ids."""

    modality = "image-text"
    name = "image_text"

    def load(self) -> tuple[Dataset, Dataset | None]:
        train, val = self.splits()
        classes, captions = self.class_names(), self.captions()
        return (PairFiles(train, captions, classes, self.channels),
                PairFiles(val, captions, classes, self.channels) if len(val) else None)


class ManifestPairs:
    """Pairs listed in `manifest` (and `val_manifest`, else a held-out fraction): mixed into a CaptionedPairs data
    module; `path_key` names the column of the files (data.image_key, data.audio_key)."""

    name: str
    what = "image"  # the files, for messages

    def __init__(self, manifest: str | None = None, val_manifest: str | None = None, path_key: str = "image",
                 caption_key: str = "caption", label_key: str | None = None, check_paths: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.manifest = manifest
        self.val_manifest = val_manifest
        self.keys = {"path_key": path_key, "caption_key": caption_key, "label_key": label_key,
                     "check_paths": check_paths, "what": self.what}

    @property
    def source(self) -> str:
        return f"{self.name} ({self.manifest})"

    def manifests(self) -> tuple[str, str | None]:
        if not self.manifest:
            raise ConfigError(f"data={self.name} needs data.manifest=FILE: a .jsonl, .csv or .tsv of {self.what} paths "
                              "and captions")
        return self.manifest, self.val_manifest

    def identity(self) -> Any:
        files = [Path(m).expanduser() for m in self.manifests() if m]
        return {"manifests": file_identity(files), "caption_key": self.keys["caption_key"]}

    def read_pairs(self) -> tuple[Pairs, Pairs | None]:
        train, val = self.manifests()
        return read_manifest(train, **self.keys), read_manifest(val, **self.keys) if val else None


class PreparedManifests(ManifestPairs):
    """Sources whose manifests selfsup writes itself (train.jsonl, val.jsonl), once, into `cache_folder()` (keyed by
    the source's files and settings) with `prepare(folder)`; an explicit data.manifest is used as it is."""

    def cache_folder(self) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare(self, folder: Path) -> tuple[Path, Path]:  # pragma: no cover - abstract
        raise NotImplementedError

    def manifests(self) -> tuple[str, str | None]:
        if self.manifest is None:
            folder = self.cache_folder()
            train, val = folder / "train.jsonl", folder / "val.jsonl"
            if not (train.is_file() and val.is_file()):
                try:
                    train, val = self.prepare(folder)
                except OSError as e:
                    raise DataError(f"cannot write the {self.name} manifests to {folder}: {e.strerror or e}; set "
                                    "data.cache_dir to a writable folder") from None
            self.manifest = str(train)
            self.val_manifest = str(val)
        return self.manifest, self.val_manifest


class ImageTextManifest(ManifestPairs, ImageTextDataModule):
    """Image-text pairs listed in a manifest: data.image_key, data.caption_key, data.label_key name its columns."""

    name = "image_text_manifest"

    def __init__(self, image_key: str = "image", **kwargs: Any) -> None:
        super().__init__(path_key=image_key, **kwargs)
