"""The two optimisation loops of gradient inversion, shared by the attacks.

- ``adam``: Adam over dummy tensors, optionally on sign(grad) (IG's "signed Adam"),
  projected onto a box after every step, with IG's step decay (x0.1 at 3/8, 5/8, 7/8 of
  the run). Keeps the iterate with the best objective seen.
- ``lbfgs``: L-BFGS as in DLG (lr 1; each outer iteration runs up to ``inner`` closures).
Objectives are closures returning a scalar; only the dummies receive gradients (the
victim's weights are constants), so torch.autograd.grad is used instead of backward().
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from attacks.base import Clock


def adam(objective: Callable[[], torch.Tensor], variables: Sequence[torch.Tensor], *, iterations: int,
         lr: float | Sequence[float], signed: bool = True, decay: bool = True,
         boxes: Sequence[tuple[float, float] | None] | None = None,
         clock: Clock | None = None, start: int = 0) -> tuple[list[torch.Tensor], float]:
    """Minimise objective() over ``variables`` (leaf tensors, updated in place).

    Returns (best variables, best objective). ``start`` offsets the iteration count in the
    clock's history when loops are chained (GIDM phases)."""
    lrs = [lr] * len(variables) if isinstance(lr, (int, float)) else list(lr)
    boxes = boxes or [None] * len(variables)
    opt = torch.optim.Adam([{"params": [v], "lr": r} for v, r in zip(variables, lrs)])
    milestones = [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)] if decay else []
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    best, best_vars = math.inf, [v.detach().clone() for v in variables]
    for i in range(iterations):
        loss = objective()
        grads = torch.autograd.grad(loss, list(variables), allow_unused=True)
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        if value < best:
            best, best_vars = value, [v.detach().clone() for v in variables]
        for v, g in zip(variables, grads):
            v.grad = None if g is None else (g.sign() if signed else g)
        opt.step()
        sched.step()
        with torch.no_grad():
            for v, box in zip(variables, boxes):
                if box is not None:
                    v.clamp_(*box)
        if clock is not None:
            clock.log(start + i, value)
    return best_vars, best


def lbfgs(objective: Callable[[], torch.Tensor], variables: Sequence[torch.Tensor], *, iterations: int,
          lr: float = 1.0, inner: int = 20, clock: Clock | None = None) -> tuple[list[torch.Tensor], float]:
    """DLG's optimiser: torch.optim.LBFGS(variables, lr) stepped ``iterations`` times.
    Stops early when the objective turns non-finite (L-BFGS can diverge) and returns the best."""
    opt = torch.optim.LBFGS(list(variables), lr=lr, max_iter=inner, history_size=100)
    best, best_vars = math.inf, [v.detach().clone() for v in variables]
    state = {"value": math.inf}

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective()
        grads = torch.autograd.grad(loss, list(variables), allow_unused=True)
        for v, g in zip(variables, grads):
            v.grad = torch.zeros_like(v) if g is None else g
        state["value"] = float(loss.detach())
        return loss

    for i in range(iterations):
        opt.step(closure)
        value = state["value"]
        if not math.isfinite(value) or any(not torch.isfinite(v).all() for v in variables):
            break
        if value < best:
            best, best_vars = value, [v.detach().clone() for v in variables]
        if clock is not None:
            clock.log(i, value)
        if value < 1e-12:
            break
    return best_vars, best
