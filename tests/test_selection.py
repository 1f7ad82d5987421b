"""Tests for strategies/selection/emd.py, strategies/selection/selectors.py and strategies/selection/shapley.py.

Numbers are the worked check of shared/papers/fedemd.md (C = 10 classes, uniform
global distribution) and small games whose Shapley values are known by hand; each
selector's seeded draws pass a chi-square test against the law its P_t implies.
"""

import itertools
import math

import numpy as np
import pytest
from scipy.stats import chisquare, wasserstein_distance

from fedsim.data.partition import label_histograms, maverick_ids, partition
from fedsim.rng import derive
from strategies.client_registry import ClientInfo
from strategies.selection.emd import categorical_l1, label_distance, ordinal_w1, scipy_values
from strategies.selection.selectors import FedEMDSelector, RandomSelector
from strategies.selection.shapley import RoundContributions, ShapleySelector, exact_shapley, tmc_shapley

UNIFORM = np.ones(10)
MISSING_1 = np.array([100, 0, 100, 100, 100, 100, 100, 100, 100, 100])
ONLY_1 = np.eye(10)[1] * 500
EXCLUSIVE_1 = np.full(10, 120.0)
EXCLUSIVE_1[1] = 6000  # the FMNIST exclusive_1 Maverick: 6000 class-1 + 120 of each other class


def clients_from(hists) -> list[ClientInfo]:
    return [ClientInfo(100 + i, i, int(np.sum(h)), np.asarray(h, np.int64)) for i, h in enumerate(hists)]


@pytest.mark.parametrize("counts, l1, w1", [(MISSING_1, 0.2, 37 / 90), (ONLY_1, 1.8, 3.7),
                                            (EXCLUSIVE_1, 1.495, 3.073)])
def test_label_emd_worked_check(counts, l1, w1):
    assert categorical_l1(counts, UNIFORM) == pytest.approx(l1, abs=1e-3)
    assert ordinal_w1(counts, UNIFORM) == pytest.approx(w1, abs=1e-3)


def test_authors_distance_worked_check_and_its_class_9_division():
    assert scipy_values(MISSING_1, UNIFORM) == pytest.approx(0.1)
    assert scipy_values(EXCLUSIVE_1, UNIFORM) == pytest.approx(4.9)
    with pytest.raises(ValueError, match="class 9"):
        scipy_values(ONLY_1, UNIFORM)  # no class-9 data: the authors' code divides by zero


def test_categorical_emd_is_a_label_distance_the_authors_form_is_not():
    """Moving the Maverick's mass to another class changes nothing for the value-based form."""
    moved = np.roll(EXCLUSIVE_1, 1)  # class 2 now holds the 6000
    ref = np.array([1, 50, 1, 1, 1, 1, 1, 1, 1, 1.0])
    assert categorical_l1(EXCLUSIVE_1, ref) < categorical_l1(moved, ref)
    assert scipy_values(EXCLUSIVE_1 * 1.0, ref) == pytest.approx(scipy_values(moved, ref))


def test_missing_classes_and_empty_references_do_not_divide_by_zero():
    with np.errstate(all="raise"):
        d = label_distance("categorical-l1", np.stack([ONLY_1, np.zeros(10)]), np.zeros(10))
        sel = FedEMDSelector(clients_from([ONLY_1, MISSING_1, MISSING_1]))
        p = sel.probabilities(1, clients_from([ONLY_1, MISSING_1, MISSING_1]))
    assert np.isfinite(d).all() and np.isfinite(p).all()


def test_fedemd_first_round_scores_by_hand():
    """Round 1, nothing selected yet: score = alpha * EMD_g only."""
    hists = [ONLY_1 / 5, MISSING_1, MISSING_1, MISSING_1]
    # p_glob = (3, 1, 3, ..., 3) / 28. Class-1-only client: (1 - 1/28) + 9 * 3/28 = 27/14;
    # client missing class 1: 1/28 + 9 * (1/9 - 3/28) = 1/14.
    sel = FedEMDSelector(clients_from(hists), alpha=0.5, beta=0.1)
    expected = 0.5 * np.array([27 / 14, 1 / 14, 1 / 14, 1 / 14])
    np.testing.assert_allclose(sel.scores(1, clients_from(hists)), expected)
    p = sel.probabilities(1, clients_from(hists))
    assert p.sum() == pytest.approx(1.0)
    assert p[0] / p[1] == pytest.approx(math.exp(expected[0] - expected[1]))


def test_scipy_values_mode_reproduces_the_authors_scores():
    """Authors: alpha * W(profile, ones) - t * beta * W(profile, cum), profile = counts / counts[9]."""
    typical = np.full(10, 120.0)
    hists = [typical, typical, EXCLUSIVE_1]
    cum = np.array([1, 50, 1, 1, 1, 1, 1, 1, 1, 1.0])  # the authors' initial cumulative counts
    sel = FedEMDSelector(clients_from(hists), alpha=0.11, beta=0.001, distance="scipy-values", cum_init=cum)
    t = 3
    # by hand: typical profile = ones -> W_g = 0, W_c = W(ones, cum) = 4.9;
    # Maverick profile = cum -> W_g = 4.9, W_c = 0
    np.testing.assert_allclose(sel.scores(t, clients_from(hists)),
                               [-t * 0.001 * 4.9, -t * 0.001 * 4.9, 0.11 * 4.9])
    # and after a selection, against scipy on the raw cumulative counts
    sel.selected(t, clients_from(hists)[:1])
    cum = cum + typical
    want = [0.11 * wasserstein_distance(h / h[9], UNIFORM) - 4 * 0.001 * wasserstein_distance(h / h[9], cum)
            for h in hists]
    np.testing.assert_allclose(sel.scores(4, clients_from(hists)), want)


def test_k_distinct_clients_even_when_all_probabilities_are_equal():
    clients = clients_from([np.full(10, 30)] * 40)
    for selector in (FedEMDSelector(clients), RandomSelector(), ShapleySelector()):
        for rnd in range(1, 30):
            p = selector.probabilities(rnd, clients)
            assert p.sum() == pytest.approx(1.0)
            chosen = selector.select(rnd, clients, 5, derive(0, "select", rnd))
            ids = [c.partition_id for c in chosen]
            assert len(ids) == 5 and len(set(ids)) == 5


def test_selection_is_reproducible_from_the_seed():
    clients = clients_from(label_histograms(*_digits_exclusive(1)))

    def run(seed):
        sel = FedEMDSelector(clients)
        return [[c.partition_id for c in sel.select(t, clients, 5, derive(seed, "select", t))]
                for t in range(1, 40)]

    assert run(0) == run(0)
    assert run(0) != run(1)


def _digits_exclusive(k: int):
    from sklearn.datasets import load_digits

    labels = load_digits().target
    return labels, partition(labels, 50, f"exclusive-{k}", seed=0), 10


def test_maverick_is_preferred_first_then_its_probability_decays():
    """exclusive-1 on the digits, 50 clients, 5 per round, default alpha and beta: the
    Maverick has the highest P_1; as t * beta * EMD_c grows its probability falls below
    the typical client's."""
    labels, parts, c = _digits_exclusive(1)
    clients = clients_from(label_histograms(labels, parts, c))
    mav = maverick_ids("exclusive-1", 50)[0]
    sel = FedEMDSelector(clients)
    probs = []
    for t in range(1, 301):
        p = sel.probabilities(t, clients)
        probs.append((p[mav], np.median(np.delete(p, mav))))
        sel.select(t, clients, 5, derive(0, "select", t))
    p1 = FedEMDSelector(clients).probabilities(1, clients)
    assert np.argmax(p1) == mav and p1[mav] > 1.4 * np.median(p1)  # odds ~1.5 on 32-image clients
    odds = np.array([m / typ for m, typ in probs])
    assert odds[0] > odds[99] > odds[199]
    assert odds[299] < 1.0  # the decay term dominates: the Maverick is now less likely


def test_maverick_ids_follow_the_scheme():
    assert maverick_ids("exclusive-2", 10) == [8, 9]
    assert maverick_ids("shared-3", 10) == [7, 8, 9]
    assert maverick_ids("dirichlet", 10) == []


# --- Shapley -----------------------------------------------------------------------------


def test_exact_shapley_of_an_additive_game_is_each_players_worth():
    worth = [0.3, 0.1, 0.0, 0.6]
    phi = exact_shapley(4, lambda s: sum(worth[i] for i in s))
    np.testing.assert_allclose(phi, worth)


def test_exact_shapley_glove_game():
    """Player 0 has a left glove, 1 and 2 right gloves; a pair is worth 1:
    phi = (2/3, 1/6, 1/6) (the classic glove game)."""
    phi = exact_shapley(3, lambda s: float(0 in s and (1 in s or 2 in s)))
    np.testing.assert_allclose(phi, [2 / 3, 1 / 6, 1 / 6])


def test_tmc_shapley_approaches_the_exact_values_and_is_efficient():
    rng = np.random.default_rng(0)
    v = {}

    def u(s):
        if s not in v:
            v[s] = float(len(s) ** 1.5 + 0.5 * (0 in s) * len(s))
        return v[s]

    exact = exact_shapley(5, u)
    est = tmc_shapley(5, u, rng=rng, permutations=2000)
    np.testing.assert_allclose(est, exact, atol=0.05)
    assert est.sum() == pytest.approx(u((0, 1, 2, 3, 4)) - u(()))


def test_shapley_selector_favours_clients_that_helped():
    clients = clients_from([np.full(10, 30)] * 6)
    sel = ShapleySelector(decay=0.5, temperature=0.01, explore=0.0)
    helpful = {0: 0.05, 1: 0.0, 2: -0.02}  # additive utility: phi = these
    sel.observe(1, RoundContributions(clients[:3], lambda s: sum(helpful[i] for i in s)))
    assert sel.values == pytest.approx({0: 0.025, 1: 0.0, 2: -0.01})
    p = sel.probabilities(2, clients)
    assert p[0] > p[3] > p[2] and p[3] == pytest.approx(p[1])


def test_shapley_floor_keeps_a_client_valued_low_once_in_play():
    clients = clients_from([np.full(10, 30)] * 10)
    bad = {i: (-0.2 if i == 0 else 0.01) for i in range(10)}
    draws = {}
    for explore in (0.0, 0.1):
        sel = ShapleySelector(decay=0.5, temperature=0.01, explore=explore)
        sel.observe(1, RoundContributions(clients, lambda s: sum(bad[i] for i in s)))
        rng = np.random.default_rng(0)
        draws[explore] = sum(0 in [c.partition_id for c in sel.select(r, clients, 3, rng)] for r in range(2, 402))
        p = sel.probabilities(2, clients)
        assert p.sum() == pytest.approx(1.0) and p.min() >= explore / 10 - 1e-12
    # without the floor client 0 has P ~ e^-10.5 / 9 per pick and is starved for good; with it
    # P >= 0.01 per pick, ~3 % per round of 3 picks: about 12 of 400 rounds
    assert draws[0.0] == 0 and draws[0.1] >= 5


# --- draws follow P_t ---------------------------------------------------------------------


def subset_law(p: np.ndarray, k: int) -> dict[tuple[int, ...], float]:
    """Probability of each k-subset under successive sampling without replacement (draw
    i with p_i, remove it, renormalise, repeat: the law of numpy's choice(replace=False, p)
    and of the spec's weighted sampling), by enumerating the ordered draws."""
    law: dict[tuple[int, ...], float] = {}
    for order in itertools.permutations(range(len(p)), k):
        prob, left = 1.0, 1.0
        for i in order:
            prob, left = prob * p[i] / left, left - p[i]
        key = tuple(sorted(order))
        law[key] = law.get(key, 0.0) + prob
    return law


def _fedemd_after_three_rounds():
    """FedEMD at round 4: P_4 far from uniform and from P_3 (large alpha, beta), EMD_c term active."""
    clients = clients_from([ONLY_1 / 5, MISSING_1, np.full(10, 30), EXCLUSIVE_1 / 10, np.eye(10)[3] * 90])
    sel = FedEMDSelector(clients, alpha=1.0, beta=0.4)
    for t in (1, 2, 3):
        sel.select(t, clients, 2, derive(1, "select", t))
    return sel, clients, 4


def _shapley_after_one_round():
    clients = clients_from([np.full(10, 30)] * 5)
    sel = ShapleySelector(decay=0.5, temperature=0.02, explore=0.1)
    worth = [0.04, 0.0, -0.02, 0.02, 0.01]
    sel.observe(1, RoundContributions(clients, lambda s: sum(worth[i] for i in s)))
    return sel, clients, 2


def _random():
    return RandomSelector(), clients_from([np.full(10, 30)] * 5), 1


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("make", [_random, _fedemd_after_three_rounds, _shapley_after_one_round])
def test_draws_follow_the_logged_probabilities(make, k):
    """3000 seeded draws of k clients at a fixed round (bookkeeping after a draw switched off,
    so P_t stays put), against the law P_t implies (per client for k = 1, per k-subset for k = 2):
    Pearson chi-square p-value above 1e-3. A select that ignores P_t (uniform, top-k) on
    these P_t would score chi-square >= 200 (p < 1e-40)."""
    sel, clients, rnd = make()
    p = sel.probabilities(rnd, clients)
    law = subset_law(p, k)
    sel.selected = lambda *args: None  # FedEMD's p_cur would move after each draw
    rng = np.random.default_rng(11)
    counts = dict.fromkeys(law, 0)
    for _ in range(3000):
        chosen = sel.select(rnd, clients, k, rng)
        counts[tuple(c.partition_id for c in chosen)] += 1
    expected = np.array([law[s] for s in counts]) * 3000
    assert expected.min() >= 5  # chi-square approximation holds
    test = chisquare(list(counts.values()), expected)
    assert test.pvalue > 1e-3, (counts, expected)
    if make is not _random:  # power: uniform subsets would be far off this law
        uniform = np.full(len(law), 3000 / len(law))
        assert np.sum((uniform - expected) ** 2 / expected) > 200
