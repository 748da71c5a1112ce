"""kNN evaluation against a brute-force reference."""
from __future__ import annotations

import math

import pytest
import torch

from selfsup.evaluation.features import FeatureSet
from selfsup.evaluation.knn import knn_accuracy, knn_votes


def brute_force_knn(bank: torch.Tensor, bank_labels: torch.Tensor, query: torch.Tensor, k: int, t: float,
                    num_classes: int) -> list[float]:
    """One query's class votes, by plain Python: cosine to every bank sample, sort, weight exp(cos / T)."""
    sims = []
    for j in range(len(bank)):
        a, b = query.double(), bank[j].double()
        sims.append((float(a @ b / (a.norm() * b.norm())), int(bank_labels[j])))
    sims.sort(key=lambda s: -s[0])
    votes = [0.0] * num_classes
    for sim, label in sims[:k]:
        votes[label] += math.exp(sim / t)
    return votes


def test_knn_equals_a_brute_force_reference():
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(60, 8, generator=g), torch.randn(25, 8, generator=g)
    bank_labels, query_labels = torch.randint(0, 7, (60,), generator=g), torch.randint(0, 7, (25,), generator=g)
    for k in (1, 5, 20, 200):  # 200 > bank size: every sample votes
        votes = knn_votes(queries, bank, bank_labels, 7, k, 0.07, chunk_size=4)
        reference = torch.tensor([brute_force_knn(bank, bank_labels, q, k, 0.07, 7) for q in queries],
                                 dtype=torch.float64)
        torch.testing.assert_close(votes.double(), reference, rtol=1e-4, atol=1e-6)
        voted = [sorted((c for c in range(7) if row[c] > 0), key=lambda c: -row[c]) for row in reference.tolist()]
        top1 = sum(v[:1] == [int(y)] for v, y in zip(voted, query_labels)) / 25
        top5 = sum(int(y) in v[:5] for v, y in zip(voted, query_labels)) / 25
        got = knn_accuracy(FeatureSet(bank, bank_labels, torch.arange(60)),
                           FeatureSet(queries, query_labels, torch.arange(25)), ks=[k])
        prefix = "knn" if k == 20 else f"knn{k}"
        assert got[f"val/{prefix}_top1"] == pytest.approx(top1)
        assert got[f"val/{prefix}_top5"] == pytest.approx(top5)
