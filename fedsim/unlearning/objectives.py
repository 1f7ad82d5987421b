"""Local unlearning objectives: MSGM, EraseDiff, SalUn and gradient-ascent FU.

A client holds a retain set D_r and a forget set D_f, each an (images (N, C, H, W)
in [-1, 1], labels (N,) int64) tuple that may have 0 rows. Every function here is
plain PyTorch (no Flower), takes all randomness (t, eps, shuffling) from its
``generator`` and builds a fresh optimiser per call, like train.train_local.
Papers: MSGM (Jiang et al., ICCV 2025, arXiv:2412.07229), EraseDiff (Wu et al.,
arXiv:2401.05779), SalUn (Fan et al., ICLR 2024, arXiv:2310.12508), gradient-ascent
FU (Halimi et al., arXiv:2207.05521).

DDPM/score dictionary: s_theta(x_t) = -eps_theta(x_t) / sigma_t and the true
conditional score is -z / sigma_t with z = eps, so sigma_t s = -pred and
cos(s_theta, -z / sigma_t) = cos(pred, eps).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.diffusion import NoiseSchedule, diffusion_loss, predict_eps
from fedsim.train import DiffusionTask, Task, TrainStats

Data = tuple[torch.Tensor, torch.Tensor]  # (images (N, C, H, W), labels (N,))

_CHOICES = {
    "msgm_loss": ("orthogonal", "obtuse", "erase"),
    "msgm_orth_form": ("elementwise", "dot"),
    "msgm_obtuse_form": ("definition", "official-code", "hinge"),
    "erasediff_rule": ("fixed", "cosine", "bome"),
    "erasediff_target": ("uniform", "random-label"),
    "salun_relabel": ("shift", "random"),
}


@dataclass(frozen=True)
class UnlearnParams:
    """Hyper-parameters of the local unlearning objectives (config keys in brackets)."""

    msgm_loss: str = "orthogonal"  # orthogonal | obtuse | erase
    msgm_weight: float = 0.01  # L = (1 - w) L_g + w L_u
    msgm_every: int = 4  # L_u only on every N-th optimiser step (official code); 1: every step
    msgm_orth_form: str = "elementwise"  # elementwise (official code) | dot
    msgm_obtuse_form: str = "definition"  # definition | official-code | hinge
    msgm_margin: float = 0.0  # hinge: relu(cos + margin)
    erasediff_lambda: float = 0.1
    erasediff_rule: str = "fixed"  # fixed | cosine | bome
    erasediff_eta: float = 0.1
    erasediff_inner_passes: int = 2  # K full passes of Adam on f over D_f to estimate f*
    erasediff_target: str = "uniform"  # uniform | random-label (conditional models only)
    salun_mask_ratio: float = 0.5  # share of weights kept trainable
    salun_beta: float = 1e-3  # weight of the retain MSE
    salun_relabel: str = "shift"  # shift: c' = (c+1) mod C | random: c' uniform over the other classes
    grad_clip: float = 1.0  # clip_grad_norm_ in every unlearning step (0: none)

    def __post_init__(self) -> None:
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        if not 0.0 <= self.msgm_weight <= 1.0:
            raise ValueError(f"msgm_weight must be in [0, 1], got {self.msgm_weight}")
        if self.msgm_every < 1 or self.erasediff_inner_passes < 1:
            raise ValueError("msgm_every and erasediff_inner_passes must be >= 1")
        if not 0.0 < self.salun_mask_ratio <= 1.0:
            raise ValueError(f"salun_mask_ratio must be in (0, 1], got {self.salun_mask_ratio}")
        if self.salun_beta < 0 or self.grad_clip < 0:
            raise ValueError("salun_beta and grad_clip must be >= 0")


# --- helpers ---

def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _conditional(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "num_class_embeds", None) is not None


def _batch(data: Data, idx: torch.Tensor, device: torch.device) -> Data:
    return data[0][idx].to(device), data[1][idx].to(device)


def _pairs(n_main: int, n_other: int, batch_size: int,
           generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """One shuffled pass over ``n_main`` rows in minibatches, each paired with a
    minibatch (size min(batch_size, n_other)) drawn cyclically from a shuffled
    other set; None where the other set is empty."""
    order = torch.randperm(n_main, generator=generator)
    other = torch.randperm(n_other, generator=generator) if n_other else None
    pos, m = 0, min(batch_size, n_other)
    for start in range(0, n_main, batch_size):
        if other is None:
            yield order[start:start + batch_size], None
            continue
        yield order[start:start + batch_size], other[(pos + torch.arange(m)) % n_other]
        pos = (pos + m) % n_other


def _noisy(sched: NoiseSchedule, x: torch.Tensor, generator: torch.Generator,
           eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, eps) with t ~ U{0..T-1}, eps ~ N(0, I) unless given (eq. 4 of Ho et al.)."""
    t = torch.randint(0, sched.timesteps, (x.shape[0],), generator=generator).to(x.device)
    if eps is None:
        eps = torch.randn(x.shape, generator=generator).to(x.device)
    return sched.add_noise(x, eps, t), t, eps


def _relabel(labels: torch.Tensor, num_classes: int, mode: str, generator: torch.Generator) -> torch.Tensor:
    """c' != c: (c + 1) mod C ("shift") or uniform over the other C - 1 classes ("random")."""
    if num_classes < 2:
        raise ValueError(f"relabelling needs at least 2 classes, got {num_classes}")
    if mode == "shift":
        return (labels + 1) % num_classes
    offset = torch.randint(1, num_classes, labels.shape, generator=generator).to(labels.device)
    return (labels + offset) % num_classes


def _step(model: nn.Module, opt: torch.optim.Optimizer, clip: float) -> None:
    if clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||a - b||^2 / D."""
    return (a - b).pow(2).flatten(1).mean(1).mean()


# --- MSGM (Jiang et al. 2025) ---

@torch.no_grad()
def score_cosine(model: nn.Module, sched: NoiseSchedule, images: torch.Tensor,
                 labels: torch.Tensor | None, *, generator: torch.Generator,
                 batch_size: int = 256) -> torch.Tensor:
    """(N,) cos(s_theta(x_t, t), -z / sigma_t) = cos(eps_theta(x_t, t[, y]), eps), with
    (t, eps) per sample drawn once from ``generator`` (a fixed, comparable probe)."""
    model.eval()
    device = _device(model)
    n = images.shape[0]
    t = torch.randint(0, sched.timesteps, (n,), generator=generator)
    eps = torch.randn(images.shape, generator=generator)
    out = []
    for s in range(0, n, batch_size):
        e, tt = eps[s:s + batch_size].to(device), t[s:s + batch_size].to(device)
        y = None if labels is None else labels[s:s + batch_size].to(device)
        pred = predict_eps(model, sched.add_noise(images[s:s + batch_size].to(device), e, tt), tt, y)
        out.append(F.cosine_similarity(pred.flatten(1), e.flatten(1), dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def msgm_undesirable_loss(pred: torch.Tensor, eps: torch.Tensor, params: UnlearnParams, *,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """MSGM's L_u on undesirable data from pred = eps_theta(x_t) and the true noise eps.

    With sigma_t s = -pred and z = eps, per sample (D = C*H*W, sums over d):
      orthogonal/elementwise (official code): sum_d (pred_d eps_d)^2 / D, zero only where
        pred_d eps_d = 0 for every d (stronger than orthogonality);
      orthogonal/dot: (sum_d pred_d eps_d / D)^2, about cos^2(pred, eps) for unit-variance
        vectors; minimum at <pred, eps> = 0;
      obtuse/definition: + <pred, eps> / D, i.e. -<s, z>: drives cos(s, -z / sigma) below 0;
      obtuse/official-code: - <pred, eps> / D = <s, sigma z> / D, the sign of the authors' code, which pulls s
        toward the TRUE score (sign caveat: minimising +<s, z> makes s ~ -z); an option only;
      obtuse/hinge: relu(cos(pred, eps) + margin), bounded;
      erase: ||sigma s + u||^2 / D = ||u - pred||^2 / D with u ~ U(0, 1) from ``generator``.
    Returns the mean over the batch."""
    if params.msgm_loss == "erase":
        return _mse(pred, torch.rand(pred.shape, generator=generator).to(pred.device))
    prod = (pred * eps).flatten(1)
    if params.msgm_loss == "orthogonal":
        per = prod.pow(2).mean(1) if params.msgm_orth_form == "elementwise" else prod.mean(1).pow(2)
    elif params.msgm_obtuse_form == "definition":
        per = prod.mean(1)
    elif params.msgm_obtuse_form == "official-code":
        per = -prod.mean(1)
    else:
        per = F.relu(F.cosine_similarity(pred.flatten(1), eps.flatten(1), dim=1) + params.msgm_margin)
    return per.mean()


def msgm_train(model: nn.Module, sched: NoiseSchedule, retain: Data, forget: Data, *, epochs: int,
               batch_size: int, lr: float, params: UnlearnParams, generator: torch.Generator) -> TrainStats:
    """MSGM: L = (1 - w) L_g + w L_u on every ``msgm_every``-th step, L = L_g otherwise.

    L_g: DDPM simple loss on a retain minibatch; L_u: :func:`msgm_undesirable_loss` on a
    forget minibatch. An epoch is one pass over D_r, each minibatch paired with a cyclic
    D_f minibatch. Empty D_r: each epoch is one pass over D_f with L = L_u at every step;
    empty D_f: plain DDPM training."""
    model.train()
    device = _device(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n_r, n_f = retain[0].shape[0], forget[0].shape[0]
    w = params.msgm_weight
    total, steps = 0.0, 0
    for _ in range(epochs):
        pairs = _pairs(n_r, n_f, batch_size, generator) if n_r else \
            ((None, i) for i, _ in _pairs(n_f, 0, batch_size, generator))
        for ir, jf in pairs:
            loss_g = diffusion_loss(model, sched, *_batch(retain, ir, device), generator=generator) \
                if ir is not None else None
            with_u = jf is not None and (loss_g is None or (steps + 1) % params.msgm_every == 0)
            if with_u:
                xf, yf = _batch(forget, jf, device)
                x_t, t, eps = _noisy(sched, xf, generator)
                pred = predict_eps(model, x_t, t, yf)
                loss_u = msgm_undesirable_loss(pred, eps, params, generator=generator)
                loss = loss_u if loss_g is None else (1 - w) * loss_g + w * loss_u
            else:
                loss = loss_g
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _step(model, opt, params.grad_clip)
            total += float(loss.detach())
            steps += 1
    return TrainStats(loss=total / max(steps, 1), steps=steps, num_examples=n_r + n_f)


# --- EraseDiff (Wu et al.) ---

def _forget_loss(model: nn.Module, sched: NoiseSchedule, x: torch.Tensor, y: torch.Tensor,
                 params: UnlearnParams, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """EraseDiff's inner objective f = E || eps_f - eps_theta(x_t^f, t, c) ||^2.

    uniform: eps_f ~ U(0, I) builds x_t^f and is the target; random-label: eps_f =
    stopgrad eps_theta(x_t^f, t, c') with c' uniform over the other classes."""
    if params.erasediff_target == "uniform":
        u = torch.rand(x.shape, generator=generator).to(x.device)
        x_t, t, target = _noisy(sched, x, generator, eps=u)
    else:
        x_t, t, _ = _noisy(sched, x, generator)
        with torch.no_grad():
            target = predict_eps(model, x_t, t, _relabel(y, num_classes, "random", generator))
    return _mse(predict_eps(model, x_t, t, y), target)


def erasediff_train(model: nn.Module, sched: NoiseSchedule, retain: Data, forget: Data, *, epochs: int,
                    batch_size: int, lr: float, params: UnlearnParams, num_classes: int,
                    generator: torch.Generator) -> TrainStats:
    """EraseDiff's first-order bi-level solver (BOME-style, as in the official code).

    Per epoch: save theta; K = ``erasediff_inner_passes`` passes of Adam on f over D_f,
    f* = mean f over the last pass; restore theta. Then for each retain minibatch (paired
    with a cyclic forget minibatch) an Adam step on F + lambda q, q = f - f*, with
      fixed:  lambda = erasediff_lambda;
      cosine: lambda = max(eta - cos(grad F, grad q), 0)            (official code);
      bome:   lambda = max(eta ||grad q||^2 - <grad F, grad q>, 0) / ||grad q||^2   (BOME).
    Empty D_r: minimise q alone (lambda = 1); empty D_f: plain DDPM training.
    TrainStats.loss is the mean of F + lambda q over the outer steps (inner steps not counted)."""
    if params.erasediff_target == "random-label" and not _conditional(model):
        raise ValueError("erasediff_target 'random-label' needs a class-conditional model")
    model.train()
    device = _device(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n_r, n_f = retain[0].shape[0], forget[0].shape[0]

    def f_loss(idx: torch.Tensor) -> torch.Tensor:
        return _forget_loss(model, sched, *_batch(forget, idx, device), params, num_classes, generator)

    total, steps = 0.0, 0
    for _ in range(epochs):
        f_star = 0.0
        if n_f:
            saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
            inner = torch.optim.Adam(model.parameters(), lr=lr)
            for _k in range(params.erasediff_inner_passes):
                seen = []
                for jf, _ in _pairs(n_f, 0, batch_size, generator):
                    f = f_loss(jf)
                    inner.zero_grad(set_to_none=True)
                    f.backward()
                    _step(model, inner, params.grad_clip)
                    seen.append(float(f.detach()))
            f_star = sum(seen) / len(seen)
            model.load_state_dict(saved)
        pairs = _pairs(n_r, n_f, batch_size, generator) if n_r else \
            ((None, j) for j, _ in _pairs(n_f, 0, batch_size, generator))
        for ir, jf in pairs:
            opt.zero_grad(set_to_none=True)
            loss_r = diffusion_loss(model, sched, *_batch(retain, ir, device), generator=generator) \
                if ir is not None else None
            q = None if jf is None else f_loss(jf) - f_star
            if q is None or loss_r is None:
                loss = loss_r if q is None else q  # lambda = 1 when D_r is empty
                loss.backward()
            elif params.erasediff_rule == "fixed":
                lam = params.erasediff_lambda
                loss = loss_r + lam * q
                loss.backward()
            else:
                g_r = _flat_grad(loss_r, trainable, retain_graph=True)
                g_q = _flat_grad(q, trainable)
                dot, gq2 = torch.dot(g_r, g_q), g_q.pow(2).sum()
                if params.erasediff_rule == "cosine":
                    cos = dot / (g_r.norm() * g_q.norm()).clamp_min(1e-12)
                    lam = float((params.erasediff_eta - cos).clamp_min(0))
                else:
                    lam = float((params.erasediff_eta * gq2 - dot).clamp_min(0) / gq2.clamp_min(1e-12))
                _set_grad(trainable, g_r + lam * g_q)
                loss = loss_r.detach() + lam * q.detach()
            _step(model, opt, params.grad_clip)
            total += float(loss.detach())
            steps += 1
    return TrainStats(loss=total / max(steps, 1), steps=steps, num_examples=n_r + n_f)


def _flat_grad(loss: torch.Tensor, params: list[torch.Tensor], retain_graph: bool = False) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params)])


def _set_grad(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    pos = 0
    for p in params:
        p.grad = flat[pos:pos + p.numel()].view_as(p).clone()
        pos += p.numel()


# --- SalUn (Fan et al. 2024) ---

def forget_gradient(model: nn.Module, task: Task, forget: Data, *, generator: torch.Generator,
                    batch_size: int = 256) -> dict[str, torch.Tensor]:
    """grad_theta sum_{x in D_f} l(theta; x) per named parameter (zeros where unused).

    For diffusion the (t, eps) of every sample are drawn up front from ``generator``, so
    the result does not depend on ``batch_size``. The model's .grad fields are cleared."""
    model.eval()
    device = _device(model)
    images, labels = forget
    n = images.shape[0]
    extra = {}
    if isinstance(task, DiffusionTask):
        extra["t"] = torch.randint(0, task.schedule.timesteps, (n,), generator=generator)
        extra["eps"] = torch.randn(images.shape, generator=generator)
    model.zero_grad(set_to_none=True)
    for s in range(0, n, batch_size):
        kw = {k: v[s:s + batch_size].to(device) for k, v in extra.items()}
        task.loss(model, images[s:s + batch_size].to(device), labels[s:s + batch_size].to(device),
                  generator=None, **kw).sum().backward()
    grads = {name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
             for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def saliency_mask(grads: dict[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """SalUn's m = 1(|g| >= gamma) with one global threshold: exactly round(ratio * total)
    entries with the largest |g| are True (ties to the earlier entry in name order)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"mask ratio must be in (0, 1], got {ratio}")
    flat = torch.cat([g.detach().abs().flatten().float().cpu() for g in grads.values()])
    keep = int(round(ratio * flat.numel()))
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.argsort(flat, descending=True, stable=True)[:keep]] = True
    out, pos = {}, 0
    for name, g in grads.items():
        out[name] = chosen[pos:pos + g.numel()].view(g.shape).to(g.device)
        pos += g.numel()
    return out


def salun_train(model: nn.Module, sched: NoiseSchedule, retain: Data, forget: Data,
                mask: dict[str, torch.Tensor] | None, *, epochs: int, batch_size: int, lr: float,
                params: UnlearnParams, num_classes: int, generator: torch.Generator) -> TrainStats:
    """SalUn for diffusion: L = E_{D_f} || eps_theta(x_t | c) - stopgrad eps_theta(x_t | c') ||^2
    + beta * DDPM-loss(D_r), c' by ``salun_relabel``; grad <- grad * m before each step.

    Unconditional models have no class to relabel: the forget term is then
    || eps_theta(x_t) - u ||^2 with u ~ U(0, 1) (x_t built with Gaussian noise), the
    random-target analogue. An epoch is one pass over D_f, each minibatch paired with a
    cyclic D_r minibatch (beta term 0 if D_r is empty); empty D_f: nothing to do (0 steps).
    Entries outside the mask never move: Adam with all-zero gradients makes zero updates."""
    model.train()
    device = _device(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if mask is not None and (missing := [n for n, _ in named if n not in mask]):
        raise ValueError(f"saliency mask lacks parameters: {', '.join(missing[:3])}")
    masks = {} if mask is None else {n: mask[n].to(device=p.device, dtype=p.dtype) for n, p in named}
    conditional = _conditional(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n_r, n_f = retain[0].shape[0], forget[0].shape[0]
    total, steps = 0.0, 0
    for _ in range(epochs if n_f else 0):
        for jf, ir in _pairs(n_f, n_r, batch_size, generator):
            xf, yf = _batch(forget, jf, device)
            x_t, t, _ = _noisy(sched, xf, generator)
            if conditional:
                with torch.no_grad():
                    other = _relabel(yf, num_classes, params.salun_relabel, generator)
                    target = predict_eps(model, x_t, t, other)
            else:
                target = torch.rand(xf.shape, generator=generator).to(device)
            loss = _mse(predict_eps(model, x_t, t, yf), target)
            if ir is not None and params.salun_beta > 0:
                loss = loss + params.salun_beta * diffusion_loss(
                    model, sched, *_batch(retain, ir, device), generator=generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for name, p in named:
                if masks and p.grad is not None:
                    p.grad.mul_(masks[name])
            _step(model, opt, params.grad_clip)
            total += float(loss.detach())
            steps += 1
    return TrainStats(loss=total / max(steps, 1), steps=steps, num_examples=n_r + n_f)


# --- Gradient-ascent FU (Halimi et al. 2022) ---

def gradient_ascent_train(model: nn.Module, task: Task, forget: Data, *, reference: dict[str, torch.Tensor],
                          radius: float, epochs: int, batch_size: int, lr: float,
                          generator: torch.Generator, grad_clip: float = 1.0) -> TrainStats:
    """Projected gradient ascent on the mean forget loss F_ku (Halimi et al.):
    w <- Proj_{||w - w_ref|| <= radius}(w + lr * grad F_ku(w)), plain SGD steps with the
    gradient clipped to ``grad_clip`` (0: none), the projection joint over all parameters.
    TrainStats.loss is the mean forget loss seen (before each ascent step)."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    model.train()
    device = _device(model)
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if missing := [n for n, _ in named if n not in reference]:
        raise ValueError(f"reference lacks parameters: {', '.join(missing[:3])}")
    ref = {n: reference[n].to(device=p.device, dtype=p.dtype) for n, p in named}
    n = forget[0].shape[0]
    total, steps = 0.0, 0
    for _ in range(epochs):
        for idx, _ in _pairs(n, 0, batch_size, generator):
            loss = task.loss(model, *_batch(forget, idx, device), generator=generator).mean()
            model.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            with torch.no_grad():
                for _name, p in named:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=lr)
                dist = torch.sqrt(sum((p - ref[k]).pow(2).sum() for k, p in named))
                if dist > radius:
                    for k, p in named:
                        p.copy_(ref[k] + (p - ref[k]) * (radius / dist))
            total += float(loss.detach())
            steps += 1
    model.zero_grad(set_to_none=True)
    return TrainStats(loss=total / max(steps, 1), steps=steps, num_examples=n)


def reference_model(global_sd: dict[str, torch.Tensor], local_sd: dict[str, torch.Tensor],
                    num_clients_in_round: int) -> dict[str, torch.Tensor]:
    """Halimi's w_ref = (N w_global - w_local) / (N - 1): the mean of the other N - 1
    clients' models under FedAvg with equal weights. Non-float entries are copied from
    the global state."""
    n = num_clients_in_round
    if n < 2:
        raise ValueError(f"reference_model needs at least 2 clients in the round, got {n}")
    if set(global_sd) != set(local_sd):
        raise ValueError("global and local state dicts have different keys")
    return {k: (n * g - local_sd[k].to(g)) / (n - 1) if g.is_floating_point() else g.clone()
            for k, g in global_sd.items()}
