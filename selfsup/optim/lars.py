"""LARS (You et al. 2017) as SimCLR and BYOL use it: SGD with momentum and a layer-wise trust ratio."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch


class LARS(torch.optim.Optimizer):
    """Per parameter tensor: g <- g + wd w; g <- g * eta ||w|| / ||g|| (1 where either norm is 0);
    v <- m v + g; w <- w - lr v.

    Parameter groups with `lars_exclude: True` (biases and norm parameters, see optim.param_groups) get
    neither the trust ratio nor weight decay, as in the SimCLR and BYOL recipes. Norms stay on the device
    (no host sync); the update uses torch._foreach ops.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if not group["lars_exclude"]:
                if group["weight_decay"]:
                    grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                w_norms = torch._foreach_norm(params)
                g_norms = torch._foreach_norm(grads)
                trust = [torch.where((w > 0) & (g > 0), group["trust_coefficient"] * w / g, torch.ones_like(w))
                         for w, g in zip(w_norms, g_norms)]
                grads = torch._foreach_mul(grads, trust)
            buffers = []
            for p, g in zip(params, grads):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffers.append(state["momentum_buffer"])
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, grads)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss
