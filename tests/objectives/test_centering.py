"""Sinkhorn-Knopp against a plain loop written here (SwAV's algorithm), its padding weights, and the weighted
EMA centre."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import free_port

from selfsup.errors import ConfigError
from selfsup.objectives.centering import Centering, sinkhorn_knopp


def plain_sinkhorn(scores: list[list[float]], temperature: float, iterations: int) -> list[list[float]]:
    """SwAV's Sinkhorn-Knopp on python lists: Q = exp(S / t)^T over prototypes x samples, total 1, then per iteration
    every prototype row to 1 / K and every sample column to 1 / M; each sample's column times M."""
    m, k = len(scores), len(scores[0])
    q = [[math.exp(scores[i][j] / temperature) for i in range(m)] for j in range(k)]
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        q = [[v / sum(row) / k for v in row] for row in q]
        columns = [sum(q[j][i] for j in range(k)) for i in range(m)]
        q = [[q[j][i] / columns[i] / m for i in range(m)] for j in range(k)]
    return [[q[j][i] * m for j in range(k)] for i in range(m)]


@pytest.mark.parametrize("iterations", [1, 3])
def test_sinkhorn_knopp_equals_the_plain_loop(iterations):
    torch.manual_seed(0)
    scores = torch.randn(6, 5)
    expected = torch.tensor(plain_sinkhorn(scores.tolist(), 0.5, iterations))
    got = sinkhorn_knopp(scores, 0.5, iterations)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(1), torch.ones(6))  # each sample's targets are a distribution


def test_padding_rows_weighted_zero_are_left_out():
    """SK over rows some of which are padding (weight 0) equals SK over the real rows alone, with zeros for the
    padding: iBOT's fixed-size patch slots."""
    torch.manual_seed(1)
    scores = torch.randn(9, 7)
    weights = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1, 1.0])
    got = sinkhorn_knopp(scores, 0.1, 3, weights)
    real = weights.bool()
    torch.testing.assert_close(got[real], sinkhorn_knopp(scores[real], 0.1, 3), rtol=1e-5, atol=1e-6)
    assert torch.equal(got[~real], torch.zeros(3, 7))


def test_the_weighted_centre_is_the_ema_of_the_real_rows_mean():
    centering = Centering("ema", 4, momentum=0.8)
    centering.center.fill_(1.0)
    scores = torch.randn(5, 4)
    weights = torch.tensor([1.0, 0, 1, 0, 1])
    centering.update(scores, weights)
    torch.testing.assert_close(centering.center, 0.8 * torch.ones(1, 4) + 0.2 * scores[weights.bool()].mean(0, True))
    targets = centering.targets(scores, 0.04)
    torch.testing.assert_close(targets, F.softmax((scores - centering.center) / 0.04, dim=-1))


@pytest.mark.parametrize("kwargs,message", [({"mode": "swav"}, "objective.centering must be one of"),
                                            ({"iterations": 0}, "objective.sinkhorn_iterations")])
def test_bad_centering_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Centering(**{"mode": "sinkhorn_knopp", "dim": 4, **kwargs})


def _half_batch_worker(rank: int, world: int, port: int, scores: torch.Tensor, weights: torch.Tensor,
                       out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mine, my_weights = scores[rank::world], weights[rank::world]  # rank r holds every world-th sample
    centering = Centering("ema", scores.shape[1], momentum=0.5)
    centering.update(mine, my_weights)
    out[rank] = (sinkhorn_knopp(mine, 0.1, 3, my_weights), centering.center.clone())
    dist.destroy_process_group()


def test_two_processes_with_half_batches_give_one_process_targets_and_centre():
    """Sinkhorn-Knopp and the EMA centre sum over all processes: each rank's rows of the targets, and the
    centre, are what one process computes on the whole batch (padding rows included)."""
    torch.manual_seed(2)
    scores, weights = torch.randn(10, 6), torch.tensor([1.0, 1, 0, 1, 1, 1, 0, 1, 1, 1])
    out = mp.Manager().dict()
    mp.spawn(_half_batch_worker, args=(2, free_port(), scores, weights, out), nprocs=2)
    whole = sinkhorn_knopp(scores, 0.1, 3, weights)
    centering = Centering("ema", 6, momentum=0.5)
    centering.update(scores, weights)
    for rank in range(2):
        targets, center = out[rank]
        torch.testing.assert_close(targets, whole[rank::2], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(center, centering.center)
