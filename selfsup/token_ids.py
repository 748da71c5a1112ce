"""The token ids a text objective needs from a tokenizer, as plain data.

A module of its own so that objectives (MLM) and data modules (which build it from a Hugging Face tokenizer in
data/tokenizer.py) share it without objectives importing the data package.
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
