"""Counter-based randomness keyed by sample: random numbers as a pure function of (seed, epoch, index, ...).

Why: a sample's augmentation and its MAE mask then do not depend on the number of data workers, on the
number of GPUs, nor on where a run was interrupted and resumed, so resumed and DDP runs reproduce
single-process runs exactly, with no random-generator state to save. The hash is Chris Wellons'
`lowbias32`, evaluated with exact 32-bit arithmetic inside int64 tensors on any device.
"""
from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF

# The streams of `uniform`: each use of per-sample randomness draws from its own, so no two share numbers.
PATCH_MASK_STREAM = 1  # which image patches are masked (masked image modelling)
TOKEN_MASK_STREAM = 2  # which tokens are masked, and what they become (masked language modelling)
BLOCK_MASK_STREAM = 3  # iBOT's block masks on the student's global crops (DINOv2)
JEPA_MASK_STREAM = 4  # I-JEPA's context and target blocks
VIEW_STREAM = 16  # the augmentation of view 0; view v draws from VIEW_STREAM + v


def _mulmod32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for 0 <= x < 2**32, split in 16-bit halves so no int64 product overflows."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """Mix the low 32 bits of an int64 tensor into a well-spread 32-bit hash (as int64 values)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mulmod32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mulmod32(x, 0x846CA68B)
    return x ^ (x >> 16)


def combine(key: torch.Tensor | int, value: torch.Tensor | int) -> torch.Tensor:
    """A new key from a key and a value (seed, epoch, sample index, view, stream name...)."""
    key = torch.as_tensor(key, dtype=torch.int64)
    value = torch.as_tensor(value, dtype=torch.int64, device=key.device)
    return hash32(hash32(key) ^ (value & _MASK32) ^ 0x9E3779B9)


def hash32_int(x: int) -> int:
    """hash32 of one Python int, in plain integer arithmetic: a data worker keys every sample, and one-element
    tensor operations would cost it a hundred times more."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def combine_int(key: int, value: int) -> int:
    """`combine` of Python ints (the same number)."""
    return hash32_int(hash32_int(key) ^ (value & _MASK32) ^ 0x9E3779B9)


def sample_key(seed: int, epoch: int, index: int) -> int:
    """The key of one sample in one epoch, as a Python int (used by data workers)."""
    return combine_int(combine_int(seed, epoch), index)


def uniform(keys: torch.Tensor, n: int, stream: int = 0) -> torch.Tensor:
    """A (len(keys), n) float32 tensor of U[0, 1) numbers, one row per key, on the keys' device."""
    counters = torch.arange(n, device=keys.device, dtype=torch.int64) + (stream << 20)
    bits = hash32(hash32(keys.to(torch.int64)).unsqueeze(-1) ^ hash32(counters))
    return (bits >> 8).to(torch.float32) * (1.0 / (1 << 24))


def per_sample_uniform(keys: torch.Tensor | None, size: int, n: int, stream: int,
                       device: torch.device) -> torch.Tensor:
    """(size, n) U[0, 1) numbers for a batch: keyed by its samples' keys where the batch has them (the same
    numbers whatever the batch composition, process count or resume point), else from the global generator."""
    if keys is not None:
        return uniform(keys.to(device), n, stream=stream)
    return torch.rand(size, n, device=device)
