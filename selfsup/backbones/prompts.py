"""Learned prompt tokens in a transformer's sequence (prompt tuning, Lester et al. 2021; visual prompt tuning,
Jia et al. 2022): the hook the ViT and the text transformer share, so neither copies its forward for prompts.

`prompts` (K, N, D): set 0 is inserted at position `at` (after the prefix tokens: [CLS], registers) beside the
token embeddings; set k >= 1 (deep prompts) replaces the outputs of the prompt positions before block k. The
prompts carry no position embedding, so the other tokens keep theirs and see exactly their usual input: with
absolute positions added at the input, attention is blind to where in the sequence a token sits, and `at` only
keeps the prefix where pooling reads it. The prompt outputs are dropped after the last block, so callers get
the token layout (and pooling) they have without prompts.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn


def insert_prompts(x: torch.Tensor, prompts: torch.Tensor, at: int) -> torch.Tensor:
    """x (B, T, D) with prompts (N, D) inserted before position `at`: (B, T + N, D)."""
    return torch.cat([x[:, :at], prompts.to(x.dtype).expand(len(x), -1, -1), x[:, at:]], dim=1)


def prompted_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, prompts: torch.Tensor, at: int,
                    run: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`run(block, x)` for each block on x (B, T + N, D) that holds prompts[0] at [at, at + N); prompts[k] replace
    those positions before block k. Returns the last block's output without the prompt positions: (B, T, D)."""
    n = prompts.shape[1]
    for k, block in enumerate(blocks):
        if 0 < k < len(prompts):
            x = torch.cat([x[:, :at], prompts[k].to(x.dtype).expand(len(x), -1, -1), x[:, at + n:]], dim=1)
        x = run(block, x)
    return torch.cat([x[:, :at], x[:, at + n:]], dim=1)
