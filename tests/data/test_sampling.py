"""The epoch sampler: sharding across ranks and resumable epochs."""
from __future__ import annotations

from selfsup.data.sampling import EpochSampler


def batches(sampler: EpochSampler) -> list[list[int]]:
    idx = [i for _, i in sampler]
    return [idx[k : k + sampler.batch_size] for k in range(0, len(idx), sampler.batch_size)]


def test_ranks_together_make_the_single_process_batches():
    single = EpochSampler(1000, batch_size=64, seed=3)
    single.set_epoch(2)
    ranks = [EpochSampler(1000, batch_size=32, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(2)
    merged = [sorted(a + b) for a, b in zip(*(batches(s) for s in ranks))]
    assert merged == [sorted(b) for b in batches(single)]
    assert len(merged) == 1000 // 64 and len(single) == 1000 // 64 * 64


def test_epochs_differ_and_resume_skips_done_batches():
    s = EpochSampler(100, batch_size=10, seed=0)
    first = batches(s)
    s.set_epoch(1)
    assert batches(s) != first
    s.resume(epoch=1, batches_done=4)
    full = EpochSampler(100, batch_size=10, seed=0)
    full.set_epoch(1)
    assert batches(s) == batches(full)[4:]
    assert len(s) == 100  # the epoch's full length, so Lightning counts on from the restored position
    s.set_epoch(2)
    assert len(batches(s)) == 10  # a new epoch forgets the skip
