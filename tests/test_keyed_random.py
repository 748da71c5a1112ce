"""Keyed randomness: the integer path data workers use gives the tensor path's numbers."""
from __future__ import annotations

import torch

from selfsup import keyed_random


def test_sample_keys_in_plain_integers_equal_the_tensor_hash():
    values = [0, 1, 7, 2**31 - 1, 2**32 - 1, 2**32, 2**40 + 5, -1, -12345]
    for key in values:
        assert keyed_random.hash32_int(key) == int(keyed_random.hash32(torch.tensor(key)))
        for value in values:
            assert keyed_random.combine_int(key, value) == int(keyed_random.combine(key, value))
    for seed, epoch, index in [(0, 0, 0), (3, 2, 59_999), (2**33, 7, 11)]:
        expected = int(keyed_random.combine(keyed_random.combine(seed, epoch), index))
        assert keyed_random.sample_key(seed, epoch, index) == expected
