"""SimCLR and BYOL: losses against references, gathered negatives, EMA targets, two views."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import free_port
from torch import nn

from selfsup.errors import ConfigError
from selfsup.objectives.byol import BYOL, regression_loss, target_momentum
from selfsup.objectives.simclr import SimCLR, nt_xent
from selfsup.optim import param_groups

TWO_VIEWS = [{"key": "view1"}, {"key": "view2"}]


def brute_force_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """NT-Xent written out one anchor at a time, as in the paper's Algorithm 1."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = [math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i]
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / sum(sims))
    return torch.tensor(total / (2 * n), dtype=torch.float64)


@pytest.mark.parametrize("t", [0.1, 0.2, 0.5])
def test_nt_xent_equals_the_brute_force_reference(t):
    torch.manual_seed(0)
    z1, z2 = torch.randn(7, 16), torch.randn(7, 16)
    loss, accuracy = nt_xent(z1, z2, t)
    torch.testing.assert_close(loss.double(), brute_force_nt_xent(z1, z2, t), rtol=1e-5, atol=1e-6)
    loss_same, accuracy_same = nt_xent(z1, z1.clone(), t)  # identical views: every positive is the best match
    assert accuracy_same == 1.0 and loss_same < loss


def _gathered_nt_xent_worker(rank: int, world: int, port: int, z1: torch.Tensor, z2: torch.Tensor, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    n = len(z1) // world
    # Rank r holds every world-th sample, as the EpochSampler shards a batch.
    a = z1[rank::world].clone().requires_grad_(True)
    b = z2[rank::world].clone().requires_grad_(True)
    loss, _ = nt_xent(a, b, 0.2)
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    out[rank] = (mean_loss / world, a.grad / world, b.grad / world)  # DDP averages gradients over ranks
    assert len(a) == n
    dist.destroy_process_group()


def test_gathered_negatives_give_the_single_process_loss_and_gradients():
    torch.manual_seed(0)
    world = 2
    z1, z2 = torch.randn(8, 5), torch.randn(8, 5)
    out = mp.Manager().dict()
    mp.spawn(_gathered_nt_xent_worker, args=(world, free_port(), z1, z2, out), nprocs=world)
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    loss, _ = nt_xent(a, b, 0.2)
    loss.backward()
    for rank in range(world):
        rank_loss, grad_a, grad_b = out[rank]
        torch.testing.assert_close(rank_loss, loss.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad_a, a.grad[rank::world], rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(grad_b, b.grad[rank::world], rtol=1e-5, atol=1e-8)


class TinyBackbone(nn.Module):
    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def byol(base_momentum: float = 0.99) -> tuple[nn.Module, BYOL]:
    torch.manual_seed(0)
    backbone = TinyBackbone()
    return backbone, BYOL(backbone, TWO_VIEWS, projector_hidden_dim=8, projector_dim=4, predictor_hidden_dim=8,
                          base_momentum=base_momentum)


def test_byol_momentum_schedule_end_points():
    assert target_momentum(0, 1000, 0.99) == pytest.approx(0.99)
    assert target_momentum(1000, 1000, 0.99) == pytest.approx(1.0)
    assert target_momentum(500, 1000, 0.996) == pytest.approx(1 - 0.004 / 2)
    assert target_momentum(250, 1000, 0.99) < target_momentum(750, 1000, 0.99)


def test_byol_ema_update_is_the_weighted_average():
    backbone, objective = byol()
    with torch.no_grad():
        for p in [*backbone.parameters(), *objective.projector.parameters()]:
            p.add_(torch.randn_like(p))
    target = [*objective.target["backbone"].parameters(), *objective.target["projector"].parameters()]
    before = [p.clone() for p in target]
    online = [p.clone() for p in [*backbone.parameters(), *objective.projector.parameters()]]
    objective.after_optimizer_step(backbone, 30, 100)
    tau = target_momentum(30, 100, 0.99)
    after = [*objective.target["backbone"].parameters(), *objective.target["projector"].parameters()]
    assert len(after) == len(online) == len(before)
    for t0, o, t1 in zip(before, online, after):
        torch.testing.assert_close(t1, tau * t0 + (1 - tau) * o)
    assert objective.step_metrics() == {"target_momentum": tau}


def test_no_gradient_reaches_the_byol_target():
    backbone, objective = byol()
    batch = {"view1": torch.randn(4, 12), "view2": torch.randn(4, 12)}
    objective(backbone, batch).loss.backward()
    target = [*objective.target["backbone"].parameters(), *objective.target["projector"].parameters()]
    assert all(p.grad is None and not p.requires_grad for p in target)
    assert all(p.grad is not None for p in [*backbone.parameters(), *objective.predictor.parameters()])
    optimized = {id(p) for g in param_groups({"objective": objective}, 0.1) for p in g["params"]}
    assert not optimized & {id(p) for p in target}  # the optimizer never sees the target


def test_byol_loss_is_the_symmetric_normalised_mse():
    p, z = torch.randn(5, 4), torch.randn(5, 4)
    expected = ((F.normalize(p, dim=1) - F.normalize(z, dim=1)) ** 2).sum(1)
    torch.testing.assert_close(regression_loss(p, z), expected)


def test_byol_target_weights_survive_a_checkpoint_round_trip():
    backbone, objective = byol()
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(1.0)
    objective.after_optimizer_step(backbone, 5, 10)
    state = {k: v.clone() for k, v in objective.state_dict().items()}
    assert any(k.startswith("target.copies.backbone.") for k in state)
    _, restored = byol()
    restored.load_state_dict(state)
    restored_state = restored.target["backbone"].state_dict().values()
    for (name, a), b in zip(objective.target["backbone"].state_dict().items(), restored_state):
        torch.testing.assert_close(a, b, msg=name)


def test_simclr_and_byol_need_two_views():
    with pytest.raises(ConfigError, match="two views"):
        SimCLR(TinyBackbone(), [{"key": "image"}])
    with pytest.raises(ConfigError, match="two views"):
        BYOL(TinyBackbone(), [{"key": "image"}])


@pytest.mark.parametrize("objective_class", [SimCLR, BYOL])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_backbones_work_with_both_objectives(objective_class, pool):
    from selfsup.backbones.vit import ViT

    torch.manual_seed(0)
    backbone = ViT("vit_tiny_patch16_224", img_size=32, in_chans=3, pool=pool, depth=1)
    objective = objective_class(backbone, TWO_VIEWS, projector_hidden_dim=32, projector_dim=16,
                                **({"predictor_hidden_dim": 32} if objective_class is BYOL else {}))
    batch = {"view1": torch.randn(4, 3, 32, 32), "view2": torch.randn(4, 3, 32, 32)}
    loss = objective(backbone, batch).loss
    loss.backward()
    assert torch.isfinite(loss) and backbone.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
