"""Text data modules: a corpus of documents, tokenized once, served as keyed token samples.

Three ways to cut a corpus into samples (`mode`):
- `lines`: one document per sample, [CLS] tokens [SEP], truncated to `max_length`, padded per batch (to the
  batch's longest, rounded up to a multiple of 8); keeps each document's `label` where the source has one.
- `packed`: all documents concatenated (separated by [SEP]) and cut into blocks of exactly `max_length` tokens,
  [CLS] block [SEP]: no padding, the most tokens per step (RoBERTa's FULL-SENTENCES).
- `packed` with `next_sentence=true`: BERT's sentence pairs, [CLS] A [SEP] B [SEP] with `token_type_ids` and
  `next_sentence_label` (0: B follows A in the document, 1: B comes from another document, drawn per sample key).

The validation split holds out documents by a hash of their text, so it is the same on every run and machine, and
duplicate documents never straddle the split. Samples are dicts with `index`, `key` (the sample's randomness key),
`input_ids`, `attention_mask` and, where there are some, `label`, `token_type_ids`, `next_sentence_label`.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from selfsup.console import note
from selfsup.data.datamodule import KeyedDataModule
from selfsup.data.text_datasets import (
    BlockDataset,
    Corpus,
    LineDataset,
    PairDataset,
    TokenArrays,
    encode_labels,
    file_identity,
    holdout,
    lines,
    sentences,
)
from selfsup.data.tokenizer import Tokenized, tokenizer_settings
from selfsup.errors import ConfigError, DataError

MODES = ("lines", "packed")
FORMATS = {"lines": "txt", "blank_lines": "txt", "csv": "csv", "jsonl": "jsonl"}  # TextFiles: format -> extension
TABLES = ("csv", "jsonl")  # formats with a document per row, and a label column


class TextDataModule(Tokenized, KeyedDataModule):
    """Subclasses implement `read_corpus()` -> Corpus. The tokenizer comes from data.tokenizer.path, or is trained
    on the corpus once and cached (selfsup/data/tokenizer.py); objectives read its ids from `tokenizer_info`."""

    modality = "text"
    name = "text"

    def __init__(self, tokenizer: Mapping[str, Any] | None = None, mode: str = "lines", max_length: int = 128,
                 val_fraction: float = 0.01, next_sentence: bool = False, batch_size: int = 128,
                 pad_to_multiple_of: int = 8, views: list[dict[str, Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(batch_size=batch_size, **kwargs)  # `views` is for image objectives: text has none
        if mode not in MODES:
            raise ConfigError(f"data.mode must be one of {MODES}, got '{mode}'")
        if max_length < 8:
            raise ConfigError(f"data.max_length must be at least 8, got {max_length}")
        if next_sentence and mode != "packed":
            raise ConfigError("next-sentence prediction needs sentence pairs, which the packed path builds; "
                              "add data.mode=packed")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must lie in [0, 1), got {val_fraction}")
        self.tokenizer_cfg = tokenizer_settings(dict(tokenizer) if tokenizer is not None else None)
        self.mode = mode
        self.max_length = max_length
        self.val_fraction = val_fraction
        self.next_sentence = next_sentence
        self.pad_to_multiple_of = pad_to_multiple_of
        self._corpus: Corpus | None = None

    # -- what subclasses provide -------------------------------------------------------------------------
    def read_corpus(self) -> Corpus:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- corpus and tokenizer, each built once ------------------------------------------------------------
    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            corpus = self.read_corpus()
            if not any(t.strip() for t in corpus.texts):
                raise DataError(f"{self.source} holds no text; check the files there")
            self._corpus = corpus
        return self._corpus

    @property
    def num_classes(self) -> int | None:
        """The classes of a labelled corpus: its class names, else the largest label of either split + 1 (so a
        class seen only in validation still has a logit); None without labels."""
        c = self.corpus
        if c.classes:
            return len(c.classes)
        labels = [*(c.labels or ()), *(c.val_labels or ())]
        return max(labels) + 1 if labels else None

    def tokenizer_corpus(self) -> tuple[Any, Any, int]:
        c = self.corpus
        return c.identity, c.all_texts, len(c.texts) + len(c.val_texts or ())

    # -- datasets ---------------------------------------------------------------------------------------
    def splits(self) -> tuple[tuple[list[str], list[int] | None], tuple[list[str], list[int] | None]]:
        """((train texts, labels), (validation texts, labels)): the source's own split, else a hash hold-out."""
        c = self.corpus
        if c.val_texts is not None:
            return (c.texts, c.labels), (c.val_texts, c.val_labels)
        val = holdout(c.texts, self.val_fraction)
        if self.val_fraction > 0 and not val.any():
            note(f"{self.source}: data.val_fraction={self.val_fraction} holds out none of its {len(c.texts)} "
                 "documents, so the run has no validation (set a larger data.val_fraction, or a validation split)")
        pick = lambda keep: ([t for t, v in zip(c.texts, val) if v == keep],  # noqa: E731
                             [y for y, v in zip(c.labels, val) if v == keep] if c.labels is not None else None)
        return pick(False), pick(True)

    def make_dataset(self, texts: list[str], labels: list[int] | None) -> Dataset:
        info, tok = self.tokenizer_info, self.tokenizer
        if self.next_sentence:
            segs = self.corpus.pair_documents(texts, labels)
            flat = TokenArrays.encode(tok, [s for doc in segs for s in doc])
            lengths = flat.lengths()
            keep = lengths > 0  # segments without a token (only control characters, say) are dropped
            owner = np.repeat(np.arange(len(segs)), [len(doc) for doc in segs])
            counts = np.bincount(owner[keep], minlength=len(segs))
            flat = TokenArrays(flat.tokens, np.concatenate([[0], np.cumsum(lengths[keep])]))
            doc_segments = np.concatenate([[0], np.cumsum(counts[counts > 0])]).astype(np.int64)
            return PairDataset(flat, doc_segments, self.max_length, info, self.seed)
        docs = TokenArrays.encode(tok, texts)
        if self.mode == "packed":
            return BlockDataset(docs, self.max_length, info, self.seed)
        y = np.asarray(labels, dtype=np.int64) if labels is not None else None
        return LineDataset(docs, y, self.max_length, info, self.seed)

    def build_datasets(self) -> tuple[Dataset, Dataset | None]:
        (train_texts, train_labels), (val_texts, val_labels) = self.splits()
        if not train_texts:
            raise DataError(f"{self.source}: every document fell into the validation split; lower data.val_fraction")
        train = self.make_dataset(train_texts, train_labels)
        val = self.make_dataset(val_texts, val_labels) if len(val_texts) >= (3 if self.next_sentence else 1) else None
        return train, val

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad to the longest sample, rounded up to a multiple of pad_to_multiple_of (at most max_length)."""
        longest = max(len(s["input_ids"]) for s in samples)
        m = max(1, self.pad_to_multiple_of)
        length = min(max(self.max_length, longest), -(-longest // m) * m)
        ids = torch.full((len(samples), length), self.tokenizer_info.pad_id, dtype=torch.long)
        mask = torch.zeros((len(samples), length), dtype=torch.long)
        for row, s in enumerate(samples):
            n = len(s["input_ids"])
            ids[row, :n], mask[row, :n] = s["input_ids"], s["attention_mask"]
        batch = {"input_ids": ids, "index": torch.tensor([s["index"] for s in samples]),
                 "key": torch.tensor([s["key"] for s in samples])}
        if not bool(mask.all()):  # no mask without padding (packed blocks): GPUs then use flash attention
            batch["attention_mask"] = mask
        for name in ("label", "next_sentence_label"):
            if name in samples[0]:
                batch[name] = torch.tensor([s[name] for s in samples])
        if "token_type_ids" in samples[0]:
            types = torch.zeros((len(samples), length), dtype=torch.long)
            for row, s in enumerate(samples):
                types[row, : len(s["token_type_ids"])] = s["token_type_ids"]
            batch["token_type_ids"] = types
        return batch


class TextFiles(TextDataModule):
    """Plain UTF-8 text: a file or a folder of files (`pattern`, by default every file of the format's extension).

    `format=lines`: one document per line. `format=blank_lines`: documents separated by blank lines, one sentence
    per line (BERT's pretraining format; the lines are the sentences next-sentence pairs use). `format=csv`
    (a header row) or `jsonl` (one JSON object a line): one document per row, its text in `text_field` and,
    with `label_field`, its label (integers, or class names numbered in sorted order), kept in mode=lines for
    probes and supervised fine-tuning.
    """

    name = "text_files"

    def __init__(self, root: str | None = None, format: str = "lines", pattern: str | None = None,
                 encoding: str = "utf-8", text_field: str = "text", label_field: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if format not in FORMATS:
            raise ConfigError(f"data.format must be one of {', '.join(FORMATS)}, got '{format}'")
        if label_field and format not in TABLES:
            raise ConfigError(f"data.label_field needs a document per row with its label: data.format=csv or jsonl "
                              f"(got format={format})")
        self.root = Path(root).expanduser() if root else None
        self.format = format
        self.pattern = pattern or f"**/*.{FORMATS[format]}"
        self.encoding = encoding
        self.text_field = text_field
        self.label_field = label_field

    def files(self) -> list[Path]:
        if self.root is None:
            raise ConfigError("data=text_files needs data.root=PATH (a text file or a folder of .txt files)")
        if self.root.is_file():
            return [self.root]
        if not self.root.is_dir():
            raise DataError(f"data.root {self.root} does not exist; give a text file or a folder of text files")
        files = sorted(p for p in self.root.glob(self.pattern) if p.is_file())
        if not files:
            raise DataError(f"no file matches {self.pattern} under {self.root}; add text files or set data.pattern")
        return files

    def documents(self, text: str) -> list[str]:
        if self.format == "lines":
            return [line.strip() for line in text.splitlines() if line.strip()]
        return [doc.strip() for doc in re.split(r"\n\s*\n", text) if doc.strip()]

    def rows(self, path: Path, text: str) -> list[dict[str, Any]]:
        """The records of a CSV or JSON-lines file, each with the text (and label) field; DataError or
        ConfigError naming the file, and the line or the columns, where one is not."""
        if self.format == "csv":
            try:
                reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))  # a spreadsheet's byte-order mark
                rows, columns = list(reader), reader.fieldnames or []
            except csv.Error as e:
                raise DataError(f"{path} is not CSV ({e}, line {reader.line_num}); fix it or use data.format=jsonl") \
                    from None
        else:
            rows = []
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise DataError(f"{path} line {number} is not JSON ({e}); fix it (one JSON object a line)") \
                        from None
                if not isinstance(row, dict):
                    raise DataError(f"{path} line {number} is not a JSON object; give one object a line")
                rows.append(row)
            columns = list(dict.fromkeys(k for row in rows for k in row))
        for field in (self.text_field, self.label_field):
            missing = field is not None and (field not in columns or any(field not in row for row in rows))
            if missing:
                raise ConfigError(f"{path} has no field '{field}' in every row (fields: {', '.join(columns)}); "
                                  "set data.text_field / data.label_field")
        return rows

    def read(self, path: Path) -> str:
        try:
            return path.read_text(encoding=self.encoding)
        except UnicodeDecodeError as e:
            raise DataError(f"{path} is not {self.encoding} text ({e.reason} at byte {e.start}); convert it "
                            "or set data.encoding") from None
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror or e}") from None

    def read_corpus(self) -> Corpus:
        files, texts, labels = self.files(), [], []
        for path in files:
            if self.format not in TABLES:
                texts.extend(self.documents(self.read(path)))
                continue
            for row in self.rows(path, self.read(path)):
                text = row[self.text_field]
                if isinstance(text, str) and text.strip():  # empty documents go, with their labels
                    texts.append(text.strip())
                    labels.append(row[self.label_field] if self.label_field else None)
        identity: dict[str, Any] = {"files": file_identity(files), "format": self.format}
        if self.format in TABLES:
            identity["text_field"] = self.text_field
        ids, classes = encode_labels(labels, str(self.root)) if self.label_field else (None, None)
        return Corpus(texts, ids, identity, segments=lines if self.format == "blank_lines" else sentences,
                      classes=classes)


def import_datasets() -> Any:
    try:
        import datasets
    except ImportError as e:
        raise ConfigError("data=hf_text needs Hugging Face datasets: pip install 'selfsup[hf]'") from e
    return datasets


class HFText(TextDataModule):
    """A Hugging Face dataset: a Hub name (online), a builder with local files (`path=text data_files=...`,
    also json, csv, parquet), or a folder written by `Dataset.save_to_disk`. Each row is one document."""

    name = "hf_text"

    def __init__(self, path: str | None = None, name: str | None = None, data_files: Any = None,
                 split: str = "train", val_split: str | None = None, text_field: str = "text",
                 label_field: str | None = None, cache_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.config_name = name
        self.data_files = data_files
        self.split = split
        self.val_split = val_split
        self.text_field = text_field
        self.label_field = label_field
        self.cache_dir = cache_dir

    @property
    def source(self) -> str:
        return f"hf_text ({self.path})"

    def load_split(self, split: str) -> Any:
        datasets = import_datasets()
        if not self.path:
            raise ConfigError("data=hf_text needs data.path: a dataset name, a builder such as text (with "
                              "data.data_files), or a folder written by save_to_disk")
        try:
            local = Path(self.path).expanduser()
            if local.is_dir() and any((local / n).is_file() for n in ("dataset_info.json", "dataset_dict.json")):
                ds = datasets.load_from_disk(str(local))
                return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
            files = dict(self.data_files) if isinstance(self.data_files, Mapping) else self.data_files
            return datasets.load_dataset(self.path, self.config_name, data_files=files, split=split,
                                         cache_dir=self.cache_dir)
        except (FileNotFoundError, ValueError, KeyError, ConnectionError) as e:
            message = " ".join(str(e).split())[:300]
            raise DataError(f"cannot load Hugging Face dataset {self.path} (split {split}): {message}; check "
                            "data.path, data.name, data.data_files and data.split") from None

    def columns(self, ds: Any, split: str) -> tuple[list[str], list[Any] | None]:
        """The split's non-empty documents and, with `label_field`, their labels as the dataset holds them."""
        for column in (self.text_field, self.label_field):
            if column is not None and column not in ds.column_names:
                raise ConfigError(f"{self.path} (split {split}) has no column '{column}' (columns: "
                                  f"{', '.join(ds.column_names)}); set data.text_field / data.label_field")
        texts = [t if isinstance(t, str) else "" for t in ds[self.text_field]]
        if self.label_field:  # drop empty documents together with their labels
            pairs = [(t, y) for t, y in zip(texts, ds[self.label_field]) if t.strip()]
            return [t for t, _ in pairs], [y for _, y in pairs]
        return [t for t in texts if t.strip()], None

    def read_corpus(self) -> Corpus:
        train = self.load_split(self.split)
        texts, labels = self.columns(train, self.split)
        identity: dict[str, Any] = {"path": self.path, "name": self.config_name, "split": self.split,
                                    "fingerprint": getattr(train, "_fingerprint", None)}
        corpus = Corpus(texts, None, identity)
        val_labels: list[Any] = []
        if self.val_split:
            val = self.load_split(self.val_split)
            corpus.val_texts, val_labels = self.columns(val, self.val_split)
            identity["val"] = [self.val_split, getattr(val, "_fingerprint", None)]
        if labels is not None:  # both splits at once: class names get the same ids in each
            ids, names = encode_labels([*labels, *(val_labels or ())], f"{self.path} column '{self.label_field}'")
            corpus.labels = ids[: len(labels)]
            corpus.val_labels = ids[len(labels):] if self.val_split else None
            feature = getattr(train, "features", {}).get(self.label_field)
            corpus.classes = names or getattr(feature, "names", None)  # a ClassLabel column's names
        return corpus
