"""What a data module tells the objective it feeds (`Objective.bind_data`), as plain data.

A module of its own so that objectives and data modules share it without objectives importing the data package:
the token ids of the tokenizer (TokenizerInfo, built in data/tokenizer.py) and the facts of the data
(DataFacts, built by `KeyedDataModule.facts`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenizerInfo:
    """The ids an objective needs: special tokens and the vocabulary size."""

    vocab_size: int
    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    special_ids: tuple[int, ...]  # the five above plus any other special token the tokenizer declares

    @classmethod
    def default(cls, vocab_size: int) -> "TokenizerInfo":
        """The layout of every tokenizer selfsup trains: [PAD] [UNK] [CLS] [SEP] [MASK] = 0..4."""
        return cls(vocab_size, 0, 1, 2, 3, 4, (0, 1, 2, 3, 4))


@dataclass(frozen=True)
class DataFacts:
    """The data's side of the fit between data and objective, read once the data module exists.

    `tokenizer`: the token ids (text and image-text data), `tokenizer_name` where it came from; `max_length`:
    the longest token sequence of text data, `context_length`: the caption length of image-text data;
    `next_sentence`: whether text data gives sentence pairs; `image_size`, `channels`: image data's input.
    """

    modality: str
    source: str
    tokenizer: TokenizerInfo | None = None
    tokenizer_name: str = ""
    max_length: int = 0
    context_length: int = 0
    next_sentence: bool = False
    image_size: int | None = None
    channels: int | None = None
