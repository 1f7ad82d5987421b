"""Timestep recovery from the time embedding's gradient (diffusion victims, GIDM+).

A diffusers UNet embeds t as h(t) = time_proj(t), a fixed sinusoidal vector (no weights), and
feeds it to a linear layer: u = W1 h(t) + b1 (``time_embedding.linear_1``). The gradient of
the client's loss with respect to W1 is therefore

    dL/dW1 = sum_i delta_i h(t_i)^T,      delta_i = dL/du_i,

whose rows all lie in span{h(t_i)}: with one timestep (batch 1, or the shared t of GIDM's
setting) the matrix is rank one and its top right-singular vector is h(t) up to sign. The same
holds for a FedAvg update -Delta w, a sum of such gradients over the local steps (exactly for
plain SGD, where W1's own changes do not enter h). So t is read off, not searched: the
candidates t' whose h(t') lie in the row space of the observed dL/dW1 (their residual after
projection on the top-k right-singular vectors, k the numerical rank capped at the number of
timesteps asked for). This is the timestep analogue of iDLG's label recovery (attacks/labels.py);
it is our design, not the GIDM authors' (their code draws t from logits that get no gradient).

Limits: it needs fewer distinct timesteps than time_proj's width (16 for ddpm-tiny, 32 for
ddpm-small); it cannot say which image had which t (dummies are exchangeable, so the values
are assigned in order); noise added to the update (DP) fills the row space, and the residual
then ranks candidates by how close they come. Hand-written because no library reads
timesteps off gradients.
"""

from __future__ import annotations

import torch
from torch import nn

from attacks.base import AttackError

LAYER = "time_embedding.linear_1.weight"


def timestep_scores(model: nn.Module, grad_w1: torch.Tensor, timesteps: int, count: int,
                    tol: float = 1e-4) -> tuple[torch.Tensor, int]:
    """(residual (T,) of each candidate's normalised h(t') off the gradient's row space, k the
    rank used). A residual near 0 means t' was used."""
    proj = getattr(model, "time_proj", None)
    if proj is None:
        raise AttackError("analytic t needs a diffusers UNet with a sinusoidal time_proj; use t-mode = 'enumerate'")
    h = proj(torch.arange(timesteps)).double()
    if h.shape[1] != grad_w1.shape[1]:
        raise AttackError(f"{LAYER} takes {grad_w1.shape[1]} inputs but time_proj gives {h.shape[1]}")
    h = h / h.norm(dim=1, keepdim=True).clamp_min(1e-12)
    _, s, vh = torch.linalg.svd(grad_w1.double(), full_matrices=False)
    if not bool(s[0] > 0):
        raise AttackError(f"the update's {LAYER} is zero: no timestep can be read from it")
    rank = int((s > tol * s[0]).sum())
    k = max(1, min(rank, count, h.shape[1] - 1))
    v = vh[:k]  # (k, D), orthonormal rows
    residual = (h - (h @ v.T) @ v).norm(dim=1)
    return residual, k


def recover_timesteps(model: nn.Module, grad_w1: torch.Tensor, timesteps: int, count: int) -> torch.Tensor:
    """``count`` timesteps (long): the k candidates closest to the gradient's row space,
    ascending, repeated in order to fill ``count`` (a shared t fills every slot)."""
    residual, k = timestep_scores(model, grad_w1, timesteps, count)
    chosen = residual.argsort()[:k].sort().values
    return chosen[torch.arange(count) % k].long()
