"""The Lightning-free parts of image-text data: pairs, their manifests, fixed-length captions, and the dataset of
(image, caption tokens) that data/image_text.py wraps into keyed samples."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from selfsup.data.decode import open_image
from selfsup.data_facts import TokenizerInfo
from selfsup.errors import ConfigError, DataError


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
        self.tokenizer = tokenizer
        self.info = info
        self.context_length = context_length

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
        self.pairs = pairs
        self.captions = captions
        self.classes = classes
        self.channels = channels
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


def read_manifest(path: str | Path, path_key: str = "image", caption_key: str = "caption",
                  label_key: str | None = None, check_paths: bool = True, what: str = "image") -> Pairs:
    """The pairs of a manifest. Relative file paths resolve against the manifest's folder. A row without the
    file or caption field, or (with check_paths) a file that does not exist, is a DataError naming it. `what`: the
    kind of file (image, audio), for messages."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist; give a .jsonl, .csv or .tsv of {what} paths and captions")
    pairs = Pairs([], [], [] if label_key else None, [])
    try:
        for number, row in read_rows(path):
            for key in (path_key, caption_key, label_key):
                if key and key not in row:
                    raise DataError(f"{path} line {number} has no '{key}' field (fields: {', '.join(row)}); set "
                                    f"data.{what}_key / data.caption_key / data.label_key")
            file = Path(str(row[path_key])).expanduser()
            pairs.paths.append(str(file if file.is_absolute() else path.parent / file))
            pairs.names.append(str(row[path_key]))
            pairs.captions.append(str(row[caption_key] or ""))
            if label_key:
                pairs.labels.append(str(row[label_key]))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read manifest {path}: {e}") from None
    if check_paths:
        missing = [p for p in pairs.paths if not os.path.isfile(p)]
        if missing:
            raise DataError(f"manifest {path}: {what} {missing[0]} does not exist ({len(missing)} of {len(pairs)} "
                            "missing); fix the paths (relative ones resolve against the manifest's folder)")
    return pairs
