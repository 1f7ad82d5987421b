"""attacks/defenses.py's local DP: the noise is sized by the accountant for the clip norm (the
sensitivity), and what a client sends has exactly that noise."""

import math

import pytest
import torch

from attacks.config import load_attack_config
from attacks.defenses import dp_accounting, dp_noise_multiplier, dp_spent, local_dp
from fedsim.config import ConfigError
from fedsim.records.observations import Observation


@pytest.mark.parametrize("epsilon, releases", [(8.0, 1), (1.0, 1), (8.0, 10)])
def test_the_noise_multiplier_is_the_smallest_the_accountant_allows(epsilon, releases):
    z = dp_noise_multiplier(epsilon, 1e-5, releases)
    spent = dp_spent(z, 1e-5, releases)
    assert epsilon - 0.02 <= spent <= epsilon  # within the search tolerance, never over budget
    assert dp_spent(0.97 * z, 1e-5, releases) > epsilon  # 3 % less noise would overspend
    # the classical formula sqrt(2 ln(1.25/delta)) / epsilon (valid for epsilon < 1 only) overspends at 8
    if epsilon == 8.0 and releases == 1:
        assert dp_spent(math.sqrt(2 * math.log(1.25 / 1e-5)) / epsilon, 1e-5, 1) > epsilon


def test_more_releases_need_more_noise_and_sigma_scales_with_the_clip():
    one, ten = (dp_accounting(clip=2.0, epsilon=8.0, delta=1e-5, releases=r) for r in (1, 10))
    assert ten["dp_noise_multiplier"] > 2 * one["dp_noise_multiplier"]
    assert one["dp_sigma"] == pytest.approx(2.0 * one["dp_noise_multiplier"])


def test_a_noised_update_is_clipped_and_carries_sigma_of_noise():
    """A FedSGD gradient of norm 50 clipped to 1 (each entry 1/sqrt(n)), plus N(0, sigma^2)."""
    n = 200_000
    grad = {"w": torch.full((n,), 50.0 / math.sqrt(n))}
    obs = Observation(server_round=1, partition_id=0, sent={"w": torch.zeros(n)}, received=grad,
                      payload="gradient", num_examples=1, metrics={}, config={})
    out = local_dp(obs, clip=1.0, epsilon=1.0, delta=1e-5, seed=3)
    sigma = dp_accounting(clip=1.0, epsilon=1.0, delta=1e-5)["dp_sigma"]
    noise = out.received["w"].double() - 1.0 / math.sqrt(n)
    assert noise.std().item() == pytest.approx(sigma, rel=0.01)  # sd of 200,000 draws: 0.16 % error
    assert abs(noise.mean().item()) < 5 * sigma / math.sqrt(n)
    again = local_dp(obs, clip=1.0, epsilon=1.0, delta=1e-5, seed=3)
    assert torch.equal(out.received["w"], again.received["w"])


def test_the_removed_sensitivity_key_and_bad_budgets_are_refused():
    with pytest.raises(ConfigError, match="dp-sensitivity was removed"):
        load_attack_config({"defense": "dp", "dp-sensitivity": 0.01})
    for bad in ({"dp-epsilon": 0.0}, {"dp-delta": 1.0}, {"dp-releases": 0}):
        with pytest.raises(ConfigError):
            load_attack_config({"defense": "dp", **bad})


def _per_sample_clipped_mean(model, x, y, clip):
    """Independent DP-SGD reference without noise: each sample's gradient by its own backward,
    scaled to norm <= clip, averaged."""
    total = None
    for i in range(x.shape[0]):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        g = torch.cat([p.grad.flatten() for p in model.parameters()])
        g = g * min(1.0, clip / float(g.norm()))
        total = g if total is None else total + g
    return total / x.shape[0]


def test_dp_sgd_clips_each_sample_and_adds_accounted_noise():
    # FedSGD of 8 digits through Opacus: the gradient sent is mean_i clip(g_i) + N(0, (z C / B)^2);
    # a batch-level clip (clip the mean gradient) or noise not divided by B fails one of the checks
    from attacks.exchange import DpSgd, client_exchange
    from attacks.trials import dp_sgd_accounting_of
    from attacks.victims import build_victim
    from fedsim.data.datasets import load_dataset
    from fedsim.models.train import ClassifierTask
    data = load_dataset("digits", "test")
    x, y = data.images[:8], torch.as_tensor(data.labels[:8].copy())
    model = build_victim("convnet", data.shape, data.num_classes, seed=0)
    clip = 0.05  # well below the per-sample norms (~0.5), so every sample is clipped
    reference = _per_sample_clipped_mean(model, x, y, clip)

    def sent(z):
        obs, _ = client_exchange(model, ClassifierTask(), x, y, generator=torch.Generator().manual_seed(0),
                                 dp_sgd=DpSgd(clip, z, seed=5))
        return torch.cat([obs.received[n].flatten() for n, _ in model.named_parameters()])

    assert torch.allclose(sent(0.0), reference, atol=1e-6, rtol=1e-4)
    z = 2.0
    noise = (sent(z) - reference).double()
    assert noise.std().item() == pytest.approx(z * clip / 8, rel=0.05)  # ~30 k parameters
    cfg = load_attack_config({"attack": "ig", "model": "convnet", "dataset": "digits", "batch-size": 8,
                              "local-steps": 8, "defense": "dp-sgd"})
    acc = dp_sgd_accounting_of(cfg)  # 8 steps of 2 of 8 images: sample rate 0.25
    assert acc["dp_epsilon_spent"] == pytest.approx(8.0, abs=0.02)
    assert acc["dp_noise_multiplier"] == pytest.approx(dp_spent_inverse(8, 0.25), rel=0.01)


def dp_spent_inverse(steps: int, rate: float) -> float:
    """Opacus's own search for z at (epsilon 8, delta 1e-5), as a cross-check of the attack's accounting."""
    from opacus.accountants.utils import get_noise_multiplier
    return get_noise_multiplier(target_epsilon=8.0, target_delta=1e-5, sample_rate=rate, steps=steps,
                                accountant="rdp", epsilon_tolerance=0.005)


def test_secure_aggregate_is_flowers_weighted_mean_up_to_its_quantization():
    # three clients, 1, 3 and 4 examples: the server's SecAgg+ result is sum_k r_k a_k / sum_k r_k with
    # r_k = n_k / max_weight, off by at most K quantization steps of 2c / Q each (scaled back by 1 / sum r_k);
    # an unweighted mean, or a missing offset -(K - 1) c, is far outside that
    import numpy as np
    from attacks.secagg import CLIPPING_RANGE, QUANTIZATION_RANGE, secure_aggregate
    rng = np.random.default_rng(0)
    replies = [[rng.normal(size=(50, 40)), rng.normal(size=7)] for _ in range(3)]
    n = [1, 3, 4]
    state = np.random.get_state()
    out = secure_aggregate(replies, n, seed=11)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state()[1:2], state[1:2]))  # restored
    q = [round(k / 1000 * QUANTIZATION_RANGE) for k in n]
    bound = len(n) * 2 * CLIPPING_RANGE / sum(q) * 1.0001
    for i in range(2):
        want = sum(qk * r[i] for qk, r in zip(q, replies)) / sum(q)
        err = out[i] - want
        assert np.abs(err).max() <= bound
        assert np.abs(np.mean([r[i] for r in replies], axis=0) - want).max() > 20 * bound  # weighting is visible
    assert abs(float(np.concatenate([(out[0] - sum(qk * r[0] for qk, r in zip(q, replies)) / sum(q)).ravel()]).mean())) \
        < 0.1 * bound  # stochastic rounding: unbiased
    again = secure_aggregate(replies, n, seed=11)
    assert all(np.array_equal(a, b) for a, b in zip(out, again))
    with pytest.raises(ValueError, match="at least 2"):
        secure_aggregate(replies[:1], n[:1], seed=0)


def test_secagg_trial_attacks_the_aggregate_of_all_clients_images():
    from attacks.trials import fresh_trial
    cfg = load_attack_config({"attack": "ig", "model": "convnet", "dataset": "digits", "batch-size": 2,
                              "defense": "secagg", "secagg-clients": 3})
    t = fresh_trial(cfg, 0)
    obs = t.observations[0]
    assert obs.num_examples == 6 and t.targets.images.shape[0] == 6 and t.granted[0].labels.shape == (6,)
    # the aggregate is the mean of the three clients' FedSGD gradients: the gradient of all 6 images
    model = t.victim.model
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(t.targets.images), t.granted[0].labels).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(obs.received[name], p.grad, atol=2e-3)
    with pytest.raises(ConfigError, match="secagg-clients"):
        load_attack_config({"defense": "secagg", "secagg-clients": 1})
