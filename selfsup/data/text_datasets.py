"""The Lightning-free parts of the text data: documents, their token arrays, and the three kinds of samples.

`LineDataset` (one document per sample), `BlockDataset` (fixed-length packed blocks) and `PairDataset` (BERT's
sentence pairs) are plain torch Datasets indexed by (epoch, index), reusable without the data modules of text.py.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from selfsup.data_facts import TokenizerInfo
from selfsup.errors import ConfigError, DataError
from selfsup.keyed_random import sample_key

ENCODE_CHUNK = 10_000  # documents per encode_batch call, which bounds the memory of Encoding objects
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    """A document's sentences: split after . ! ? followed by white space (cheap, good enough for NSP pairs)."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def lines(text: str) -> list[str]:
    return [s.strip() for s in text.splitlines() if s.strip()]


@dataclass
class Corpus:
    """Documents as strings, optional integer labels, and what identifies the corpus for the tokenizer cache.

    `segments` splits a document into the sentences next-sentence pairs are made of. `passages`: the documents
    are consecutive short passages of longer texts (WordNet's glosses, in lexicographer-file order), so for
    next-sentence pairs a run of consecutive documents with one label is one document. A source with its own
    validation documents sets `val_texts` (and `val_labels`); otherwise a fraction is held out by hash.
    """

    texts: list[str]
    labels: list[int] | None
    identity: Any
    segments: Callable[[str], list[str]] = sentences
    passages: bool = False
    val_texts: list[str] | None = None
    val_labels: list[int] | None = None
    classes: Sequence[str] | None = field(default=None)

    def all_texts(self) -> Iterable[str]:
        yield from self.texts
        yield from self.val_texts or ()

    def pair_documents(self, texts: Sequence[str], labels: Sequence[int] | None) -> list[list[str]]:
        """The documents next-sentence pairs are drawn from, as lists of segments: one per text, or with
        `passages` one per run of consecutive texts sharing a label. A one-sentence document has no true
        continuation, so without this every WordNet pair would take the random branch."""
        docs: list[list[str]] = []
        for i, text in enumerate(texts):
            if self.passages and labels is not None and i > 0 and labels[i] == labels[i - 1]:
                docs[-1].extend(self.segments(text))
            else:
                docs.append(self.segments(text))
        return docs


def encode_labels(values: Sequence[Any], where: str) -> tuple[list[int], list[str] | None]:
    """Labels as class ids, and the class names where the labels were names. Integers (or strings of digits, as
    a CSV file holds them) are kept; anything else is a class name, numbered in sorted order. Called once on the
    labels of both splits together, so every split numbers the classes alike."""
    if any(v is None or (isinstance(v, str) and not v.strip()) for v in values):
        raise DataError(f"{where}: a document has no label; give every document one (or leave data.label_field "
                        "out)")
    if all(isinstance(v, int) and not isinstance(v, bool) or isinstance(v, str) and v.strip().lstrip("-").isdigit()
           for v in values):
        return [int(v) for v in values], None
    names = sorted({str(v).strip() for v in values})
    ids = {name: i for i, name in enumerate(names)}
    return [ids[str(v).strip()] for v in values], names


def file_identity(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    """(path, size, modification time) of each file: what the tokenizer cache key hashes, cheap for any size."""
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
    return out


def holdout(texts: Sequence[str], fraction: float) -> np.ndarray:
    """Boolean mask of the validation documents: those whose CRC-32 falls in the lowest `fraction` of its range."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"data.val_fraction must lie in [0, 1), got {fraction}")
    threshold = int(fraction * 2**32)
    return np.fromiter((zlib.crc32(t.encode("utf-8")) < threshold for t in texts), dtype=bool, count=len(texts))


class TokenArrays:
    """Variable-length token sequences in one flat int32 array plus offsets: compact, and shared by forked workers."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray) -> None:
        self.tokens = tokens
        self.offsets = offsets

    @classmethod
    def encode(cls, tokenizer: Any, texts: Sequence[str]) -> "TokenArrays":
        chunks, lengths = [], []
        for start in range(0, len(texts), ENCODE_CHUNK):
            for enc in tokenizer.encode_batch(list(texts[start : start + ENCODE_CHUNK]), add_special_tokens=False):
                chunks.append(np.asarray(enc.ids, dtype=np.int32))
                lengths.append(len(enc.ids))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
        return cls(tokens, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def as_sample(index: int, key: int, ids: np.ndarray, **extra: Any) -> dict[str, Any]:
    input_ids = torch.from_numpy(ids.astype(np.int64))
    return {"index": index, "key": key, "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids), **extra}


class LineDataset(Dataset):
    """One document per sample: [CLS] its first max_length - 2 tokens [SEP], and its label."""

    def __init__(self, docs: TokenArrays, labels: np.ndarray | None, max_length: int, info: TokenizerInfo,
                 seed: int) -> None:
        self.docs = docs
        self.labels = labels
        self.max_length = max_length
        self.info = info
        self.seed = seed

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, item: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        body = self.docs[index][: self.max_length - 2]
        ids = np.concatenate([[self.info.cls_id], body, [self.info.sep_id]])
        extra = {"label": int(self.labels[index])} if self.labels is not None else {}
        return as_sample(index, sample_key(self.seed, epoch, index), ids, **extra)


class BlockDataset(Dataset):
    """The documents as one stream (a [SEP] after each), cut into blocks: [CLS] max_length - 2 tokens [SEP]."""

    def __init__(self, docs: TokenArrays, max_length: int, info: TokenizerInfo, seed: int) -> None:
        lengths = docs.lengths()
        ends = np.cumsum(lengths + 1)  # each document then its [SEP]
        stream = np.full(int(ends[-1]) if len(ends) else 0, info.sep_id, dtype=np.int32)
        starts = ends - lengths - 1
        for d in range(len(docs)):  # documents with their tokens, the [SEP]s already in place
            stream[starts[d] : starts[d] + lengths[d]] = docs[d]
        self.stream = stream
        self.block = max_length - 2
        self.info = info
        self.seed = seed

    def __len__(self) -> int:
        return -(-len(self.stream) // self.block)

    def __getitem__(self, item: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        body = self.stream[index * self.block : (index + 1) * self.block]
        ids = np.concatenate([[self.info.cls_id], body, [self.info.sep_id]])
        return as_sample(index, sample_key(self.seed, epoch, index), ids)


def truncate_pair(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """BERT's rule: drop tokens from the end of the longer segment until both fit."""
    while len_a + len_b > budget:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


class PairDataset(Dataset):
    """BERT's next-sentence pairs: chunks of consecutive sentences of one document, split into A and B.

    Chunks are fixed once (greedy runs of sentences up to max_length - 3 tokens; a document's single-sentence
    remainder joins its previous chunk), so the dataset has a fixed size; each (epoch, index) draws from its
    sample key where A ends and whether B is the true continuation (label 0) or sentences from another document
    (label 1, also always when the chunk is a single sentence: a one-sentence document, or one longer sentence).
    """

    def __init__(self, segments: TokenArrays, doc_segments: np.ndarray, max_length: int, info: TokenizerInfo,
                 seed: int) -> None:
        if len(doc_segments) < 3:
            raise DataError("next-sentence pairs need at least 2 documents with text; use a larger corpus")
        self.segments = segments
        self.doc_segments = doc_segments
        self.info = info
        self.seed = seed
        self.budget = max_length - 3
        lengths = segments.lengths()
        chunks = []
        for d in range(len(doc_segments) - 1):
            start, total = int(doc_segments[d]), 0
            for s in range(int(doc_segments[d]), int(doc_segments[d + 1])):
                total += int(lengths[s])
                if total >= self.budget:
                    chunks.append((d, start, s + 1))
                    start, total = s + 1, 0
            end = int(doc_segments[d + 1])
            if end - start == 1 and chunks and chunks[-1][0] == d:
                chunks[-1] = (d, chunks[-1][1], end)
            elif start < end:
                chunks.append((d, start, end))
        self.chunks = np.asarray(chunks, dtype=np.int64).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self.chunks)

    def _join(self, first: int, last: int) -> np.ndarray:
        return self.segments.tokens[self.segments.offsets[first] : self.segments.offsets[last]]

    def __getitem__(self, item: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        key = sample_key(self.seed, epoch, index)
        rng = np.random.default_rng(key)
        doc, start, end = (int(v) for v in self.chunks[index])
        a_end = start + int(rng.integers(1, end - start)) if end - start > 1 else end
        a = self._join(start, a_end)
        is_random = a_end == end or bool(rng.random() < 0.5)
        if is_random:
            n_docs = len(self.doc_segments) - 1
            other = int(rng.integers(n_docs - 1))
            other += other >= doc  # any document but this one
            first, stop = int(self.doc_segments[other]), int(self.doc_segments[other + 1])
            b = self._join(first + int(rng.integers(stop - first)), stop)
        else:
            b = self._join(a_end, end)
        len_a, len_b = truncate_pair(len(a), len(b), self.budget)
        info = self.info
        ids = np.concatenate([[info.cls_id], a[:len_a], [info.sep_id], b[:len_b], [info.sep_id]])
        types = torch.zeros(len(ids), dtype=torch.long)
        types[len_a + 2 :] = 1
        return as_sample(index, key, ids, token_type_ids=types, next_sentence_label=int(is_random))
