"""Weighted k-nearest-neighbour classification on cosine similarity (Wu et al. 2018; as in solo-learn).

Each query's k most similar bank samples vote for their labels with weight exp(similarity / T); classes are
ranked by their summed votes. Top-1 and top-5 accuracy of that ranking are reported.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from selfsup.errors import ConfigError
from selfsup.evaluation.features import FeatureSet
from selfsup.evaluation.protocol import EvalContext, Protocol

DEFAULT_K = (20, 200)
DEFAULT_TEMPERATURE = 0.07


def metric_prefix(k: int) -> str:
    """`knn` for k = 20 (the usual headline number), `knn{k}` for any other k."""
    return "knn" if k == 20 else f"knn{k}"


@torch.no_grad()
def knn_votes(queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int, k: int,
              temperature: float = DEFAULT_TEMPERATURE, chunk_size: int = 1024) -> torch.Tensor:
    """Summed votes (Q, num_classes) of each query's k nearest bank samples, weighted exp(cos / T).

    Queries are processed in chunks so that the similarity matrix never exceeds chunk_size x N.
    """
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    out = []
    for q in F.normalize(queries.float(), dim=1).split(chunk_size):
        sim, idx = (q @ bank.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(len(q), num_classes, device=q.device, dtype=weights.dtype)
        out.append(votes.scatter_add_(1, bank_labels[idx], weights))
    return torch.cat(out)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5),
                  positive_only: bool = False) -> dict[int, float]:
    """Share of rows whose label is among the `k` highest scores, for each k (capped at the class count).

    `positive_only` (kNN votes): a class no neighbour voted for is never a hit, however ties among the
    unvoted classes happen to be ordered.
    """
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1)
    hits = top.indices == labels.unsqueeze(1)
    if positive_only:
        hits &= top.values > 0
    return {k: hits[:, : min(k, scores.shape[1])].any(dim=1).float().mean().item() for k in ks}


def knn_accuracy(bank: FeatureSet, queries: FeatureSet, ks: Sequence[int] = DEFAULT_K,
                 temperature: float = DEFAULT_TEMPERATURE, prefix: str = "val/") -> dict[str, float]:
    """`{prefix}knn_top1`, `..._top5` for k = 20 and `{prefix}knn{k}_top1`, ... for the other ks."""
    bank, queries = bank.labelled(), queries.labelled()
    num_classes = int(torch.cat([bank.labels, queries.labels]).max()) + 1
    results: dict[str, float] = {}
    for k in ks:
        votes = knn_votes(queries.features, bank.features, bank.labels, num_classes, k, temperature)
        acc = topk_accuracy(votes, queries.labels, positive_only=True)
        results[f"{prefix}{metric_prefix(k)}_top1"] = acc[1]
        results[f"{prefix}{metric_prefix(k)}_top5"] = acc[5]
    return results


class KNNProtocol(Protocol):
    """eval.py protocol=knn: features of the training split (the bank) and validation split, computed once."""

    name = "knn"

    def __init__(self, k: Sequence[int] = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE) -> None:
        if not k or any(int(v) < 1 for v in k):
            raise ConfigError(f"protocol.k must be a list of positive integers, got {list(k)}")
        if temperature <= 0:
            raise ConfigError(f"protocol.temperature must be positive, got {temperature}")
        self.k = [int(v) for v in k]
        self.temperature = float(temperature)

    def run(self, backbone: torch.nn.Module, ctx: EvalContext) -> dict[str, float]:
        bank, queries = ctx.features(backbone, "train"), ctx.features(backbone, "val")
        results = knn_accuracy(bank, queries, self.k, self.temperature)
        ctx.log(results, 0)
        return {**results, "train_samples": len(bank), "val_samples": len(queries)}
