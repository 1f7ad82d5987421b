"""Label recovery from the last layer's gradient (classifiers, cross-entropy).

For a final linear layer z = W h + b and softmax cross-entropy, dL/db_c = mean_i (p_ic - y_ic)
and dL/dW_c = mean_i (p_ic - y_ic) h_i. With non-negative h (ReLU/sigmoid features) and
B = 1 only the true class c has p_c - 1 < 0, so its bias entry (and its weight-row sum) is
the single negative one (iDLG, Zhao et al. 2020, sec. 3.1).

Strategies for B > 1 (shared/papers/attacks.md, iDLG):
- "bias-sign": the B most negative bias entries (assumes B distinct labels);
- "row-min": the B classes with the most negative weight-row minimum (Yin et al. 2021);
- "count": counts n_c = B (pbar_c - dL/db_c), pbar the model's mean softmax on dummy inputs,
  rounded by largest remainder so that sum_c n_c = B (Wainakh et al.-style impact
  estimation; handles repeated labels). For an untrained model pbar is close to 1/K.
The target may be an approximate gradient -Delta w / (lr E K) (FedAvg), which keeps the signs.
"""

from __future__ import annotations

import torch

from attacks.base import AttackError
from attacks.objectives import Functional, Grads

STRATEGIES = ("idlg", "bias-sign", "row-min", "count")


def last_layer(fn: Functional, target: Grads) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dL/dW (K, D), dL/db (K,) or None) of the final linear layer, found by the output size."""
    k = fn.victim.num_classes
    names = fn.names
    for i in range(len(names) - 1, -1, -1):
        g = target[i]
        if g.dim() == 2 and g.shape[0] == k:
            bias = target[i + 1] if i + 1 < len(names) and target[i + 1].shape == (k,) else None
            return g, bias
    raise AttackError(f"no final linear layer with {k} outputs: labels cannot be recovered from the gradient")


def recover_labels(fn: Functional, target: Grads, batch: int, strategy: str = "idlg", *,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch,) int64 labels recovered from g* (sorted by class; reconstructions are unordered)."""
    if strategy not in STRATEGIES:
        raise AttackError(f"unknown label strategy '{strategy}'; known: {', '.join(STRATEGIES)}")
    w, b = last_layer(fn, target)
    k = w.shape[0]
    if strategy == "idlg" and batch != 1:
        strategy = "count"
    if strategy == "idlg":
        score = b if b is not None else w.sum(1)
        return score.argmin().view(1)
    if strategy in ("bias-sign", "row-min"):
        if batch > k:
            raise AttackError(f"{strategy} recovers distinct labels: batch {batch} > {k} classes; use 'count'")
        score = b if strategy == "bias-sign" and b is not None else w.min(1).values
        return score.argsort()[:batch].sort().values
    # count: n_c = B (pbar_c - g_b,c); g_b from the bias, or from the weight rows scaled by mean |h|
    g = b if b is not None else w.sum(1) / max(float(w.abs().sum(1).max()), 1e-12)
    with torch.no_grad():
        x = torch.randn((max(batch, 8), *fn.victim.shape), generator=generator).clamp(*fn.victim.value_range)
        pbar = torch.softmax(fn.bound()(x).float(), dim=1).mean(0)
    counts = (batch * (pbar - g)).clamp(min=0)
    counts = counts * batch / counts.sum().clamp(min=1e-12)
    n = counts.floor().long()
    rest = batch - int(n.sum())
    if rest > 0:
        n[(counts - n).argsort(descending=True)[:rest]] += 1
    return torch.repeat_interleave(torch.arange(k), n)
