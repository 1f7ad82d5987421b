"""Defenses applied to what the server observes: Flower's local DP, and update compression.

Compression ("topk", "stc", "dhq", "qsgd") runs the update through the codec a
compressed fedsim run uses (fedsim/compression/codecs.py, as fedsim/app/compression_mod.py
does on a client, first round: no residual yet); the server sees the decoded
update and the bytes. It is not meant as a defense, but it is what the server
records in a compressed federation, so attacks are measured against it.

"dp" is Flower's local DP (flwr.clientapp.mod.LocalDpMod): the client clips its update to
L2 norm ``clip`` (FlatClip) and adds Gaussian noise with
    sigma = sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon
to every parameter before sending. We call the same functions the mod calls
(flwr.supercore.differential_privacy), on tensors instead of Messages. For a FedSGD
reply the gradient itself is clipped (it is the update up to -lr). Flower draws the noise
from NumPy's global generator; we seed it from the run's derived generator and restore its
state, so a seed gives the same noise.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, clip_inputs_inplace, compute_clip_model_update

from fedsim.compression.codecs import Codec, encode_update
from fedsim.records.observations import Observation


def local_dp_sigma(sensitivity: float, epsilon: float, delta: float) -> float:
    return sensitivity * math.sqrt(2 * math.log(1.25 / delta)) / epsilon


def local_dp(obs: Observation, *, clip: float, sensitivity: float, epsilon: float, delta: float,
             seed: int) -> Observation:
    """A copy of ``obs`` whose reply went through Flower's LocalDpMod (clip, then noise)."""
    names = list(obs.received)
    received = [obs.received[k].detach().double().numpy().copy() for k in names]
    if obs.payload == "weights":
        compute_clip_model_update(received, [obs.sent[k].detach().double().numpy() for k in names], clip)
    else:
        clip_inputs_inplace(received, clip)
    state = np.random.get_state()
    try:
        np.random.seed(seed % 2**32)
        add_gaussian_noise_inplace(received, local_dp_sigma(sensitivity, epsilon, delta))
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
