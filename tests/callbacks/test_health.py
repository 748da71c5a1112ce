"""The health monitor's collapse signs on feature sets whose values are known: complete collapse, full rank, and
partial collapse onto a few directions; and DINO's teacher distribution health."""
from __future__ import annotations

import math

import pytest
import torch

from selfsup.callbacks.health import alignment, normalised_feature_std, rankme, uniformity
from selfsup.objectives.dino import distribution_health


def orthogonal_rows(n: int, d: int, rank: int, seed: int = 0) -> torch.Tensor:
    """n samples in d dimensions spanning exactly `rank` directions with equal singular values."""
    g = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(d, rank, generator=g, dtype=torch.float64))
    return (left @ right.T * 3.0).float()


def signed_basis(d: int) -> torch.Tensor:
    """The 2d vectors +e_k and -e_k: unit length, spread over every dimension alike."""
    eye = torch.eye(d)
    return torch.cat([eye, -eye])


@pytest.mark.parametrize("rank", [1, 3, 16])
def test_rankme_counts_the_directions_used(rank):
    features = orthogonal_rows(64, 16, rank)
    assert rankme(features).item() == pytest.approx(rank, rel=1e-4)


def test_rankme_between_the_extremes_for_uneven_spectra():
    g = torch.Generator().manual_seed(1)
    left, _ = torch.linalg.qr(torch.randn(32, 8, generator=g))
    sigma = torch.tensor([8.0, 4, 2, 1, 0.5, 0.25, 0.125, 0.0625])
    p = sigma / sigma.sum()
    expected = math.exp(-sum(float(v) * math.log(float(v)) for v in p))
    assert rankme(left * sigma).item() == pytest.approx(expected, rel=1e-4)
    assert 1 < expected < 8


def test_feature_std_is_zero_for_a_collapse_and_known_for_a_spread():
    collapsed = torch.randn(1, 8).expand(50, 8) * torch.rand(50, 1)  # one direction, any lengths
    assert normalised_feature_std(collapsed).item() == pytest.approx(0.0, abs=1e-6)
    d = 8  # in each dimension of +-e_k: one +1, one -1 and zeros over 2d samples
    expected = math.sqrt(2 / (2 * d - 1))
    assert normalised_feature_std(signed_basis(d) * 5).item() == pytest.approx(expected, rel=1e-5)
    partial = torch.cat([signed_basis(2), torch.zeros(4, 6)], dim=1)  # 2 of 8 dimensions used
    assert normalised_feature_std(partial).item() == pytest.approx(2 / 8 * math.sqrt(2 / 3), rel=1e-5)


def test_alignment_and_uniformity_against_their_definitions():
    x = signed_basis(4)
    assert alignment(x, x * 2).item() == pytest.approx(0.0, abs=1e-7)  # the same directions
    assert alignment(x, -x).item() == pytest.approx(4.0)  # opposite points of the sphere
    # pairs of +-e_k: e_i and -e_i are 4 apart (squared), every other pair 2: 4 of the 28 pairs at 4
    pairs = 8 * 7 // 2
    expected = math.log((4 * math.exp(-2 * 4) + (pairs - 4) * math.exp(-2 * 2)) / pairs)
    assert uniformity(x).item() == pytest.approx(expected, rel=1e-5)
    assert uniformity(torch.ones(6, 3)).item() == pytest.approx(0.0, abs=1e-6)  # collapse: the maximum


def test_teacher_distribution_health_tells_the_two_collapses_apart():
    k = 16
    uniform = torch.full((8, k), 1 / k)
    health = distribution_health(uniform)
    assert health["teacher_entropy"].item() == pytest.approx(math.log(k))
    assert health["teacher_kl_uniform"].item() == pytest.approx(0.0, abs=1e-6)
    dominant = torch.zeros(8, k)
    dominant[:, 3] = 1  # every sample on one prototype
    health = distribution_health(dominant)
    assert health["teacher_entropy"].item() == pytest.approx(0.0, abs=1e-6)
    assert health["teacher_kl_uniform"].item() == pytest.approx(math.log(k))
    healthy = torch.eye(k)  # sharp, and each sample on its own prototype
    health = distribution_health(healthy)
    assert health["teacher_entropy"].item() == pytest.approx(0.0, abs=1e-6)
    assert health["teacher_kl_uniform"].item() == pytest.approx(0.0, abs=1e-6)
