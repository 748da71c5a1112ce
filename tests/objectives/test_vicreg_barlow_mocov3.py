"""VICReg, Barlow Twins and MoCo v3: each loss against a reference written out element by element, the same loss
and gradients from two processes with half batches as from one, their heads, and MoCo v3's momentum encoder."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import FlatBackbone, free_port
from torch import nn

from selfsup.backbones.vit import ViT
from selfsup.errors import ConfigError
from selfsup.objectives.barlow_twins import BarlowTwins, barlow_twins_loss
from selfsup.objectives.ema import cosine_momentum
from selfsup.objectives.heads import projection_mlp
from selfsup.objectives.mocov3 import MoCoV3, moco_infonce
from selfsup.objectives.vicreg import VICReg, vicreg_loss
from selfsup.optim import OptimConfig, param_groups

TWO_VIEWS = [{"key": "view1"}, {"key": "view2"}]


def reference_vicreg(z1: torch.Tensor, z2: torch.Tensor, weights=(25.0, 25.0, 1.0)) -> float:
    """VICReg's three terms written as sums over samples and dimensions (float64)."""
    z1, z2 = z1.double().tolist(), z2.double().tolist()
    n, d = len(z1), len(z1[0])
    invariance = sum((a - b) ** 2 for r1, r2 in zip(z1, z2) for a, b in zip(r1, r2)) / (n * d)

    def stats(z):
        mean = [sum(row[k] for row in z) / n for k in range(d)]
        cov = [[sum((row[i] - mean[i]) * (row[j] - mean[j]) for row in z) / (n - 1) for j in range(d)]
               for i in range(d)]
        variance = sum(max(0.0, 1 - math.sqrt(cov[k][k] + 1e-4)) for k in range(d)) / d
        covariance = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return variance, covariance

    (v1, c1), (v2, c2) = stats(z1), stats(z2)
    return weights[0] * invariance + weights[1] * (v1 + v2) / 2 + weights[2] * (c1 + c2)


def reference_barlow(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> float:
    """sum_i (1 - C_ii)^2 + lambd sum_{i != j} C_ij^2, C from per-dimension standardised columns (float64)."""
    n, d = z1.shape

    def column(z, k):
        values = [float(v) for v in z[:, k].double()]
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / n + 1e-5)
        return [(v - mean) / std for v in values]

    a = [column(z1, k) for k in range(d)]
    b = [column(z2, k) for k in range(d)]
    c = [[sum(a[i][s] * b[j][s] for s in range(n)) / n for j in range(d)] for i in range(d)]
    return sum((1 - c[i][i]) ** 2 for i in range(d)) + lambd * sum(c[i][j] ** 2 for i in range(d)
                                                                    for j in range(d) if i != j)


def reference_moco(q: torch.Tensor, k: torch.Tensor, t: float) -> float:
    """2 t x the mean over queries of -log softmax of the positive among all keys, one query at a time."""
    q, k = F.normalize(q.double(), dim=1), F.normalize(k.double(), dim=1)
    total = 0.0
    for i in range(len(q)):
        scores = [math.exp(float(q[i] @ k[j]) / t) for j in range(len(k))]
        total += -math.log(scores[i] / sum(scores))
    return 2 * t * total / len(q)


def test_vicreg_loss_equals_the_reference():
    torch.manual_seed(0)
    z1, z2 = torch.randn(9, 5) * 0.5, torch.randn(9, 5) * 2  # one view under the hinge's std of 1, one over
    loss, terms = vicreg_loss(z1, z2, 25.0, 25.0, 1.0)
    assert loss.item() == pytest.approx(reference_vicreg(z1, z2), rel=1e-5)
    assert set(terms) == {"invariance", "variance", "covariance"} and terms["variance"] > 0
    loss, _ = vicreg_loss(z1, z2, 2.0, 3.0, 0.5)
    assert loss.item() == pytest.approx(reference_vicreg(z1, z2, (2.0, 3.0, 0.5)), rel=1e-5)


def test_vicreg_terms_see_collapse():
    torch.manual_seed(0)
    collapsed = torch.ones(8, 4) + 1e-3 * torch.randn(8, 4)
    _, terms = vicreg_loss(collapsed, collapsed.clone())
    assert terms["invariance"] == 0 and terms["variance"] == pytest.approx(1 - 1e-2, abs=2e-2)
    spread = torch.randn(4096, 4) * 3  # independent dimensions with std 3: no hinge, covariances near 0
    _, terms = vicreg_loss(spread, spread.clone())
    assert terms["variance"] == 0 and terms["covariance"] < 0.1


@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_barlow_twins_loss_equals_the_reference(lambd):
    torch.manual_seed(1)
    z1, z2 = torch.randn(10, 6), torch.randn(10, 6)
    loss, terms = barlow_twins_loss(z1, z2, lambd)
    assert loss.item() == pytest.approx(reference_barlow(z1, z2, lambd), rel=1e-5)
    same, terms = barlow_twins_loss(z1, z1.clone(), lambd)  # identical views: a unit diagonal
    assert terms["on_diagonal"] < 1e-4 and same < loss


@pytest.mark.parametrize("t", [0.2, 1.0])
def test_moco_infonce_equals_the_reference(t):
    torch.manual_seed(2)
    q, k = torch.randn(7, 5), torch.randn(7, 5)
    loss, accuracy = moco_infonce(q, k, t)
    assert loss.item() == pytest.approx(reference_moco(q, k, t), rel=1e-5)
    _, accuracy = moco_infonce(k.clone(), k, t)  # each query is its own key: always the best match
    assert accuracy == 1.0


LOSSES = {"vicreg": lambda a, b: vicreg_loss(a, b)[0], "barlow_twins": lambda a, b: barlow_twins_loss(a, b)[0],
          "mocov3": lambda a, b: moco_infonce(a, b, 0.2)[0] + moco_infonce(b, a, 0.2)[0]}


def _two_process_worker(rank: int, world: int, port: int, z1: torch.Tensor, z2: torch.Tensor, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    n = len(z1) // world
    for name, loss_fn in LOSSES.items():
        a = z1[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        b = z2[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        loss = loss_fn(a, b)
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        out[(name, rank)] = (mean_loss / world, a.grad / world, b.grad / world)  # DDP averages gradients
    dist.destroy_process_group()


def test_two_processes_with_half_batches_give_one_process_loss_and_gradients():
    """The global statistics (VICReg's variance and covariance, Barlow Twins' standardisation and
    cross-correlation) and MoCo v3's negatives span both processes' samples."""
    torch.manual_seed(3)
    world = 2
    z1, z2 = torch.randn(8, 5), torch.randn(8, 5)
    out = mp.Manager().dict()
    mp.spawn(_two_process_worker, args=(world, free_port(), z1, z2, out), nprocs=world)
    for name, loss_fn in LOSSES.items():
        a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        loss = loss_fn(a, b)
        loss.backward()
        for rank in range(world):
            rank_loss, grad_a, grad_b = out[(name, rank)]
            rows = slice(rank * 4, (rank + 1) * 4)
            torch.testing.assert_close(rank_loss, loss.detach(), rtol=1e-5, atol=1e-6, msg=name)
            torch.testing.assert_close(grad_a, a.grad[rows], rtol=1e-4, atol=1e-7, msg=name)
            torch.testing.assert_close(grad_b, b.grad[rows], rtol=1e-4, atol=1e-7, msg=name)


def test_projection_mlp_layers():
    head = projection_mlp(6, 16, 8, layers=3, last_bn=True)
    linears = [m for m in head if isinstance(m, nn.Linear)]
    norms = [m for m in head if isinstance(m, nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(6, 16), (16, 16), (16, 8)]
    assert all(m.bias is None for m in linears) and len(norms) == 3 and not norms[-1].affine
    assert head(torch.randn(4, 6)).shape == (4, 8)
    plain = projection_mlp(6, 16, 8, layers=2, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain) and plain[0].bias is not None


@pytest.mark.parametrize("cls, kwargs", [(VICReg, {"expander_dim": 16}), (BarlowTwins, {"projector_dim": 16}),
                                         (MoCoV3, {"hidden_dim": 16, "dim": 8})])
def test_two_view_objectives_refuse_other_view_counts(cls, kwargs):
    with pytest.raises(ConfigError, match="exactly two views"):
        cls(FlatBackbone(), [{"key": "view1"}], **kwargs)


def test_negative_weights_and_temperatures_are_refused():
    with pytest.raises(ConfigError, match="objective.variance_weight"):
        VICReg(FlatBackbone(), TWO_VIEWS, expander_dim=16, variance_weight=-1)
    with pytest.raises(ConfigError, match="objective.lambd"):
        BarlowTwins(FlatBackbone(), TWO_VIEWS, projector_dim=16, lambd=-0.1)
    with pytest.raises(ConfigError, match="objective.temperature"):
        MoCoV3(FlatBackbone(), TWO_VIEWS, hidden_dim=16, dim=8, temperature=0)


def mocov3() -> tuple[nn.Module, MoCoV3]:
    torch.manual_seed(0)
    backbone = FlatBackbone()
    return backbone, MoCoV3(backbone, TWO_VIEWS, hidden_dim=16, dim=8)


def test_no_gradient_reaches_the_momentum_encoder_and_it_follows_the_ema():
    backbone, objective = mocov3()
    batch = {"view1": torch.randn(6, 12), "view2": torch.randn(6, 12)}
    out = objective(backbone, batch)
    out.loss.backward()
    encoder = [*objective.momentum_encoder["backbone"].parameters(),
               *objective.momentum_encoder["projector"].parameters()]
    assert encoder and all(p.grad is None and not p.requires_grad for p in encoder)
    assert backbone.net[1].weight.grad is not None and objective.predictor[0].weight.grad is not None
    with torch.no_grad():
        for p in [*backbone.parameters(), *objective.projector.parameters()]:
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in encoder]
    online = [p.clone() for p in [*backbone.parameters(), *objective.projector.parameters()]]
    objective.after_optimizer_step(backbone, 10, 40)
    m = cosine_momentum(10, 40, 0.99)
    for t0, o, t1 in zip(before, online, encoder):
        torch.testing.assert_close(t1, m * t0 + (1 - m) * o)
    assert objective.step_metrics()["teacher_momentum"] == pytest.approx(m)
    assert not any(p is q for p in objective.predictor.parameters() for q in encoder)  # the predictor is online only


def test_frozen_patch_projection_stays_out_of_the_optimizer():
    vit = ViT("vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, freeze_patch_embed=True)
    frozen = {id(p) for p in vit.vit.patch_embed.parameters()}
    assert frozen and not any(p.requires_grad for p in vit.vit.patch_embed.parameters())
    optimised = {id(p) for g in param_groups({"backbone": vit}, 0.1) for p in g["params"]}
    assert not frozen & optimised and len(optimised) > 10


def test_biases_and_norms_train_at_their_own_learning_rate():
    """Barlow Twins' recipe: biases and norms at 0.0048 / 0.2 of the weights' learning rate."""
    config = OptimConfig.from_recipe(global_batch=512, steps_per_epoch=10, total_steps=100, name="lars",
                                     base_lr=0.2, no_decay_lr_scale=0.024)
    assert config.lr == pytest.approx(0.4)
    decayed, exempt = param_groups({"head": nn.Linear(3, 4)}, 1e-6, config.lr, config.no_decay_lr_scale)
    assert exempt["lr"] == pytest.approx(0.4 * 0.024) and "lr" not in decayed
    with pytest.raises(ConfigError, match="optim.no_decay_lr_scale"):
        OptimConfig.from_recipe(global_batch=256, steps_per_epoch=1, total_steps=1, base_lr=0.1, no_decay_lr_scale=0)
