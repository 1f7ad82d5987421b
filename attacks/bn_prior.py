"""BatchNorm statistics prior from the buffers a FedAvg client sends back (threat model bn_mode = "buffers").

Yin et al. (See through Gradients, CVPR 2021) match the batch statistics of the dummies' features
in every BatchNorm layer to the statistics the true batch had. A server running FedAvg gets
them for free: a client training in train mode updates each BatchNorm layer's running statistics
once per step s = 1..S,

    r_s = (1 - m) r_{s-1} + m b_s,      b_s: the step's batch mean, or its unbiased variance,

and sends r_S back with its weights; the server sent r_0, and ``num_batches_tracked`` grows by S.
Taking the steps' statistics as one value b (exact for one local step; with several, the
estimate weighs the later steps more, and the features drift as the weights move):

    b = (r_S - (1 - m)^S r_0) / (1 - (1 - m)^S).

The prior is sum_l ||mean_l(x') - mean_l||_2 + ||var_l(x') - var_l||_2 over the layers, on the
inputs of each BatchNorm layer in the attacker's own forwards of the dummies (batch mode; with
several forwards per objective, as the simulation attack's unrolled steps, their statistics are
averaged first). Written by hand: no library reads BN statistics out of a FedAvg reply.
"""

from __future__ import annotations

import torch
from torch import nn

from attacks.base import AttackError
from attacks.threat_model import AttackInput


def recovered_statistics(model: nn.Module, inp: AttackInput) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{BatchNorm module name: (batch mean, unbiased batch variance)} read from the reply's buffers."""
    if inp.payload != "weights":
        raise AttackError("bn-mode 'buffers' reads the running statistics a FedAvg client sends back; a FedSGD "
                          "reply carries gradients only")
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        if module.momentum is None:
            raise AttackError(f"BatchNorm '{name}' keeps a cumulative average (momentum None); not supported")
        keys = [f"{name}.{k}" for k in ("running_mean", "running_var", "num_batches_tracked")]
        if any(k not in inp.update or k not in inp.sent for k in keys):
            raise AttackError(f"the reply holds no running statistics of BatchNorm '{name}'")
        steps = int(inp.update[keys[2]].item())
        if steps < 1:
            raise AttackError(f"BatchNorm '{name}' was not updated by the client (num_batches_tracked unchanged)")
        keep = (1.0 - module.momentum) ** steps
        stats = []
        for key in keys[:2]:
            before = inp.sent[key].double()
            after = before + inp.update[key].double()
            stats.append(((after - keep * before) / (1.0 - keep)).float())
        out[name] = (stats[0], stats[1])
    if not out:
        raise AttackError("bn-mode 'buffers' needs a victim with BatchNorm layers")
    return out


class BNPrior:
    """Records the per-channel statistics of every BatchNorm layer's input in the attacker's forwards
    (forward pre-hooks on ``model``) and scores them against ``targets``."""

    def __init__(self, model: nn.Module, targets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.targets = targets
        self.seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in targets}
        modules = dict(model.named_modules())
        self.handles = [modules[name].register_forward_pre_hook(self._hook(name)) for name in targets]

    def _hook(self, name: str):
        def hook(module, args):
            x = args[0]
            dims = [0] + list(range(2, x.dim()))
            self.seen[name].append((x.mean(dims), x.var(dims, unbiased=True)))
        return hook

    def reset(self) -> None:
        for v in self.seen.values():
            v.clear()

    def value(self) -> torch.Tensor:
        """sum_l ||mean_l - target mean_l|| + ||var_l - target var_l||, over the forwards since reset()."""
        total = torch.zeros(())
        for name, (mean, var) in self.targets.items():
            seen = self.seen[name]
            if not seen:
                continue
            m = torch.stack([s[0] for s in seen]).mean(0)
            v = torch.stack([s[1] for s in seen]).mean(0)
            total = total + (m - mean).norm() + (v - var).norm()
        return total

    def close(self) -> None:
        for h in self.handles:
            h.remove()
