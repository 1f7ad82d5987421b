"""Defenses applied to what the server observes: Flower's local DP, DP-SGD, and update compression.

Compression ("topk", "stc", "dhq", "qsgd") runs the update through the codec a
compressed fedsim run uses (fedsim/compression/codecs.py, as fedsim/app/compression_mod.py
does on a client, first round: no residual yet); the server sees the decoded
update and the bytes. It is not meant as a defense, but it is what the server
records in a compressed federation, so attacks are measured against it.

"dp" is update-level local DP as Flower's LocalDpMod applies it: the client clips its update
to L2 norm ``clip`` (FlatClip) and adds Gaussian noise N(0, sigma^2) to every parameter before
sending. The sensitivity of a clipped update is the clip norm, so sigma = z * clip, and the
noise multiplier z comes from Opacus's RDP accountant: the smallest z for which ``releases``
such releases (sample rate 1: every one of the client's updates is noised) spend at most
(epsilon, delta). The mod's own classical formula sqrt(2 ln(1.25/delta)) / epsilon holds only
for epsilon < 1, so it is not used. ``dp_accounting`` reports the epsilon actually spent.
We call the functions the mod calls (flwr.supercore.differential_privacy), on tensors
instead of Messages. For a FedSGD reply the gradient itself is clipped (it is the update up
to -lr). Flower draws the noise from NumPy's global generator; we seed it from the run's
derived generator and restore its state, so a seed gives the same noise.

"dp-sgd" is the client-side defence: Opacus's DP-SGD inside the client's local steps
(attacks/exchange.py): per-sample gradients clipped to ``clip``, summed, N(0, (z clip)^2) noise
added, divided by the batch size, z from the same RDP accountant for sample rate b / n and
``releases`` x local steps steps (the batches are a shuffle, not Poisson samples: the usual
approximation). ``dp_sgd_accounting`` gives its numbers.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, clip_inputs_inplace, compute_clip_model_update

from fedsim.compression.codecs import Codec, encode_update
from fedsim.records.observations import Observation


# RDP orders: Opacus's defaults stop at 63, too low for one release at large epsilon
DP_ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + list(range(64, 4097, 8))
# Subsampled (DP-SGD): each RDP order costs O(alpha) there, and orders above 256 did not move z at
# (epsilon 8 or 1, delta 1e-5, q 0.25, 8 steps): the same z in 1.6 s instead of 52 s. Fewer orders
# can only give a looser bound, so never less noise.
DP_SGD_ALPHAS = [a for a in DP_ALPHAS if a <= 256]


@functools.lru_cache(maxsize=64)
def dp_noise_multiplier(epsilon: float, delta: float, releases: int = 1) -> float:
    """The smallest noise multiplier z (sigma / clip) for which ``releases`` Gaussian releases
    at sample rate 1 spend at most (epsilon, delta) under Opacus's RDP accountant (a binary
    search over z; cached, since every trial of a config asks for the same one)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=1.0, steps=releases,
                                      accountant="rdp", epsilon_tolerance=0.005, alphas=DP_ALPHAS))


def dp_spent(noise_multiplier: float, delta: float, releases: int = 1, sample_rate: float = 1.0) -> float:
    """Epsilon spent by ``releases`` Gaussian releases of multiplier z at ``sample_rate`` (RDP)."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, releases)]
    return float(accountant.get_epsilon(delta, alphas=DP_ALPHAS if sample_rate >= 1 else DP_SGD_ALPHAS))


@functools.lru_cache(maxsize=64)
def dp_sgd_noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """DP-SGD's z for ``steps`` noised steps at ``sample_rate`` within (epsilon, delta) (RDP)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant="rdp", epsilon_tolerance=0.005,
                                      alphas=DP_ALPHAS if sample_rate >= 1 else DP_SGD_ALPHAS))


def dp_sgd_accounting(*, clip: float, epsilon: float, delta: float, sample_rate: float,
                      steps: int) -> dict[str, float]:
    """{dp_noise_multiplier, dp_sigma (on the summed clipped gradients), dp_epsilon_spent} of DP-SGD."""
    z = dp_sgd_noise_multiplier(epsilon, delta, sample_rate, steps)
    return {"dp_noise_multiplier": z, "dp_sigma": z * clip,
            "dp_epsilon_spent": dp_spent(z, delta, steps, sample_rate)}


def dp_accounting(*, clip: float, epsilon: float, delta: float, releases: int = 1) -> dict[str, float]:
    """{dp_noise_multiplier, dp_sigma, dp_epsilon_spent} for these settings."""
    z = dp_noise_multiplier(epsilon, delta, releases)
    return {"dp_noise_multiplier": z, "dp_sigma": z * clip, "dp_epsilon_spent": dp_spent(z, delta, releases)}


def local_dp(obs: Observation, *, clip: float, epsilon: float, delta: float, seed: int,
             releases: int = 1) -> Observation:
    """A copy of ``obs`` whose reply was clipped to ``clip`` and noised with sigma = z * clip,
    z from the accountant for (epsilon, delta) over ``releases`` releases."""
    names = list(obs.received)
    received = [obs.received[k].detach().double().numpy().copy() for k in names]
    if obs.payload == "weights":
        compute_clip_model_update(received, [obs.sent[k].detach().double().numpy() for k in names], clip)
    else:
        clip_inputs_inplace(received, clip)
    state = np.random.get_state()
    try:
        np.random.seed(seed % 2**32)
        add_gaussian_noise_inplace(received, dp_accounting(clip=clip, epsilon=epsilon, delta=delta,
                                                           releases=releases)["dp_sigma"])
    finally:
        np.random.set_state(state)
    out = {k: torch.from_numpy(v).to(obs.received[k].dtype) for k, v in zip(names, received)}
    return Observation(server_round=obs.server_round, partition_id=obs.partition_id, sent=obs.sent,
                       received=out, payload=obs.payload, num_examples=obs.num_examples,
                       metrics=obs.metrics, config=obs.config)


def compressed(obs: Observation, codec: Codec, *, seed: int) -> Observation:
    """A copy of ``obs`` whose update went through ``codec`` (first round: no residual)."""
    names = list(obs.received)
    update = {k: v.detach().cpu().numpy() for k, v in obs.update().items()}
    rng = np.random.default_rng(seed) if codec.needs_rng else None
    data, sent = encode_update(codec, {k: update[k] for k in names}, rng=rng)
    if obs.payload == "weights":
        out = {k: obs.sent[k] + torch.from_numpy(np.ascontiguousarray(sent[k])).to(obs.sent[k].dtype) for k in names}
    else:
        out = {k: torch.from_numpy(np.ascontiguousarray(sent[k])).to(obs.received[k].dtype) for k in names}
    return Observation(server_round=obs.server_round, partition_id=obs.partition_id, sent=obs.sent,
                       received=out, payload=obs.payload, num_examples=obs.num_examples,
                       metrics=obs.metrics, config=obs.config, codec=codec.spec(), encoded=data)
