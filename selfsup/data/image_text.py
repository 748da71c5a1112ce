"""Image-text pairs for CLIP from a manifest: a CSV, TSV or JSONL file of image path + caption (+ optional label).

Batches hold the image view(s) of the objective (uint8 from the workers, normalised on the device, as for any
image data), `input_ids` and `attention_mask` of the caption ([CLS] caption [SEP], truncated or padded to
`context_length` tokens), `label` where the manifest has a label column, `index`, `key` and `skipped` (an
unreadable image is replaced by the next readable pair and counted, with data.on_error=skip).

The tokenizer is data.tokenizer.path, else a WordPiece vocabulary trained once on the training captions and
cached (data/tokenizer.py), as for text data.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from selfsup.data.base import ImageDataModule, Tokenized
from selfsup.data.image_folder import open_image
from selfsup.data.text_datasets import file_identity, holdout
from selfsup.data.tokenizer import tokenizer_settings
from selfsup.errors import ConfigError, DataError
from selfsup.token_ids import TokenizerInfo


@dataclass
class Pairs:
    """Image paths and their captions, with label names where the source has them. `names`: each image as the
    source names it (a manifest's own field, before resolving it to a path), which the hold-out hashes so that
    the split does not depend on where the data is mounted."""

    paths: list[str]
    captions: list[str]
    labels: list[str] | None = None
    names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, keep: np.ndarray) -> "Pairs":
        pick = lambda values: [v for v, k in zip(values, keep) if k] if values is not None else None  # noqa: E731
        return Pairs(pick(self.paths), pick(self.captions), pick(self.labels), pick(self.names))


class Captions:
    """A caption as fixed-length token ids: [CLS] its first context_length - 2 tokens [SEP], then [PAD]s."""

    def __init__(self, tokenizer: Any, info: TokenizerInfo, context_length: int) -> None:
        self.tokenizer, self.info, self.context_length = tokenizer, info, context_length

    def __call__(self, caption: str) -> dict[str, torch.Tensor]:
        body = self.tokenizer.encode(caption, add_special_tokens=False).ids[: self.context_length - 2]
        n = len(body) + 2
        ids = torch.full((self.context_length,), self.info.pad_id, dtype=torch.long)
        ids[:n] = torch.tensor([self.info.cls_id, *body, self.info.sep_id])
        mask = torch.zeros(self.context_length, dtype=torch.long)
        mask[:n] = 1
        return {"input_ids": ids, "attention_mask": mask}


class PairFiles(Dataset):
    """(image, {input_ids, attention_mask[, label]}) of pair i; `samples` lets errors name the image file."""

    def __init__(self, pairs: Pairs, captions: Captions, classes: list[str] | None, channels: int) -> None:
        self.pairs, self.captions, self.classes, self.channels = pairs, captions, classes, channels
        self.samples = [(path, None) for path in pairs.paths]
        index = {name: i for i, name in enumerate(classes or [])}
        self.targets = [index[name] for name in pairs.labels] if pairs.labels is not None and classes else None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Any]]:
        image = open_image(self.pairs.paths[i], self.channels)
        text = self.captions(self.pairs.captions[i])
        if self.targets is not None:
            text["label"] = self.targets[i]
        return image, text


class ImageTextDataModule(Tokenized, ImageDataModule):
    """Subclasses implement `read_pairs()` -> (training pairs, validation pairs or None) and `identity()` (what
    names the captions for the tokenizer cache). Without validation pairs, `val_fraction` of the pairs are held
    out by a hash of the image path (the same split on every run and machine)."""

    modality = "image-text"
    name = "image_text"

    def __init__(self, tokenizer: Mapping[str, Any] | None = None, context_length: int = 77,
                 val_fraction: float = 0.02, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if context_length < 4:
            raise ConfigError(f"data.context_length must be at least 4, got {context_length}")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must lie in [0, 1), got {val_fraction}")
        self.tokenizer_cfg = tokenizer_settings(dict(tokenizer) if tokenizer is not None else None)
        self.context_length, self.val_fraction = context_length, val_fraction
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
                raise DataError(f"{self.source} holds no image-text pairs; check the manifest")
            if val is None:
                held = holdout(train.names or train.paths, self.val_fraction)
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

    def image_identity(self, path: str) -> str:
        """What makes two rows the same image for retrieval: the path (sources with copies override this)."""
        return path

    def pair_ids(self, split: str, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and caption ids of rows `index` of `split`: rows sharing an image (or a caption) share its id."""
        pairs = self.splits()[0 if split == "train" else 1]
        rows = index.tolist()
        images = [self.image_identity(pairs.paths[i]) for i in rows]
        texts = [pairs.captions[i] for i in rows]
        number = lambda values: {v: n for n, v in enumerate(dict.fromkeys(values))}  # noqa: E731
        image_number, text_number = number(images), number(texts)
        return (torch.tensor([image_number[v] for v in images], device=index.device),
                torch.tensor([text_number[v] for v in texts], device=index.device))

    def captions(self) -> Captions:
        return Captions(self.tokenizer, self.tokenizer_info, self.context_length)

    def load(self) -> tuple[Dataset, Dataset | None]:
        train, val = self.splits()
        classes, captions = self.class_names(), self.captions()
        return (PairFiles(train, captions, classes, self.channels),
                PairFiles(val, captions, classes, self.channels) if len(val) else None)


# -- manifests ---------------------------------------------------------------------------------------------
def read_rows(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, row) of a .jsonl / .json (one object per line), .csv or .tsv file (a header row first)."""
    suffix = path.suffix.lower()
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a spreadsheet's byte-order mark is not text
        if suffix in (".jsonl", ".json"):
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield number, json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path} line {number} is not JSON ({e.msg}); one object per line") from None
        elif suffix in (".csv", ".tsv"):
            tsv = suffix == ".tsv"  # tab-separated: quotes are text (a caption may start with one)
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.DictReader(f)
            for number, row in enumerate(reader, 2):
                yield number, row
        else:
            raise ConfigError(f"manifest {path}: unknown format '{suffix}'; use .jsonl, .csv or .tsv")


def read_manifest(path: str | Path, image_key: str = "image", caption_key: str = "caption",
                  label_key: str | None = None, check_paths: bool = True) -> Pairs:
    """The pairs of a manifest. Relative image paths resolve against the manifest's folder. A row without the
    image or caption field, or (with check_paths) an image file that does not exist, is a DataError naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist; give a .jsonl, .csv or .tsv of image paths and captions")
    pairs = Pairs([], [], [] if label_key else None, [])
    try:
        for number, row in read_rows(path):
            for key in (image_key, caption_key, label_key):
                if key and key not in row:
                    raise DataError(f"{path} line {number} has no '{key}' field (fields: {', '.join(row)}); set "
                                    "data.image_key / data.caption_key / data.label_key")
            image = Path(str(row[image_key])).expanduser()
            pairs.paths.append(str(image if image.is_absolute() else path.parent / image))
            pairs.names.append(str(row[image_key]))
            pairs.captions.append(str(row[caption_key] or ""))
            if label_key:
                pairs.labels.append(str(row[label_key]))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read manifest {path}: {e}") from None
    if check_paths:
        missing = [p for p in pairs.paths if not os.path.isfile(p)]
        if missing:
            raise DataError(f"manifest {path}: image {missing[0]} does not exist ({len(missing)} of {len(pairs)} "
                            "missing); fix the paths (relative ones resolve against the manifest's folder)")
    return pairs


class ImageTextManifest(ImageTextDataModule):
    """Pairs listed in `manifest` (and `val_manifest`, else a held-out fraction)."""

    name = "image_text_manifest"

    def __init__(self, manifest: str | None = None, val_manifest: str | None = None, image_key: str = "image",
                 caption_key: str = "caption", label_key: str | None = None, check_paths: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.manifest, self.val_manifest = manifest, val_manifest
        self.keys = {"image_key": image_key, "caption_key": caption_key, "label_key": label_key,
                     "check_paths": check_paths}

    @property
    def source(self) -> str:
        return f"{self.name} ({self.manifest})"

    def manifests(self) -> tuple[str, str | None]:
        if not self.manifest:
            raise ConfigError(f"data={self.name} needs data.manifest=FILE: a .jsonl, .csv or .tsv of image paths "
                              "and captions")
        return self.manifest, self.val_manifest

    def identity(self) -> Any:
        files = [Path(m).expanduser() for m in self.manifests() if m]
        return {"manifests": file_identity(files), "caption_key": self.keys["caption_key"]}

    def read_pairs(self) -> tuple[Pairs, Pairs | None]:
        train, val = self.manifests()
        return read_manifest(train, **self.keys), read_manifest(val, **self.keys) if val else None
