"""Tests for fedsim/data/partition.py: a contract every scheme meets, then one check per scheme.

Labels are synthetic and hand-countable: 10 classes x 60 samples = 600, shuffled once.
"""

import numpy as np
import pytest

from fedsim.data.partition import SCHEMES, PartitionError, label_histograms, partition

LABELS = np.random.default_rng(123).permutation(np.repeat(np.arange(10), 60))
N_CLIENTS = 10
DROPS_DATA = {"missing-1"}  # schemes that keep fewer than all positions by design


def owners(parts, labels, cls):
    """Client ids that hold at least one sample of class `cls`."""
    return [i for i, p in enumerate(parts) if np.any(labels[p] == cls)]


@pytest.fixture(scope="module")
def all_parts():
    return {s: partition(LABELS, N_CLIENTS, s, seed=0) for s in SCHEMES}


@pytest.mark.parametrize("scheme", list(SCHEMES))
class TestSchemeContract:
    def test_disjoint_sorted_int64_nonempty(self, scheme, all_parts):
        parts = all_parts[scheme]
        assert len(parts) == N_CLIENTS
        for p in parts:
            assert p.dtype == np.int64 and len(p) >= 1
            assert np.all(np.diff(p) > 0)  # sorted, no repeats
        joined = np.concatenate(parts)
        assert len(np.unique(joined)) == len(joined)  # disjoint
        assert joined.min() >= 0 and joined.max() < len(LABELS)

    def test_keeps_all_data(self, scheme, all_parts):
        joined = np.sort(np.concatenate(all_parts[scheme]))
        if scheme in DROPS_DATA:
            np.testing.assert_array_equal(joined, np.flatnonzero(LABELS != 1))
        else:
            np.testing.assert_array_equal(joined, np.arange(len(LABELS)))

    def test_deterministic_in_seed(self, scheme, all_parts):
        again = partition(LABELS, N_CLIENTS, scheme, seed=0)
        other = partition(LABELS, N_CLIENTS, scheme, seed=1)
        assert all(np.array_equal(a, b) for a, b in zip(all_parts[scheme], again))
        assert not all(np.array_equal(a, b) for a, b in zip(all_parts[scheme], other))

    def test_histograms_sum_to_sizes(self, scheme, all_parts):
        parts = all_parts[scheme]
        h = label_histograms(LABELS, parts, 10)
        assert h.shape == (N_CLIENTS, 10) and h.dtype == np.int64
        np.testing.assert_array_equal(h.sum(axis=1), [len(p) for p in parts])


def mean_max_share(parts):
    h = label_histograms(LABELS, parts, 10)
    return float(np.mean(h.max(axis=1) / h.sum(axis=1)))


def test_iid_sizes_equal():
    assert [len(p) for p in partition(LABELS, 7, "iid", seed=0)] == [86] * 5 + [85] * 2  # 600 = 5*86 + 2*85


def test_dirichlet_small_alpha_is_more_skewed():
    skewed = mean_max_share(partition(LABELS, N_CLIENTS, "dirichlet", seed=0, alpha=0.1))
    balanced = mean_max_share(partition(LABELS, N_CLIENTS, "dirichlet", seed=0, alpha=100.0))
    assert skewed > 0.5 > 0.2 > balanced  # iid would give ~0.1-0.2


def test_dirichlet_many_clients_meets_min_size():
    # 6 per client on average: flwr-datasets' 10 redraws miss min_size=4, so the top-up path runs
    parts = partition(LABELS, 100, "dirichlet", seed=0, alpha=0.5, min_size=4)
    assert min(len(p) for p in parts) >= 4
    assert sum(len(p) for p in parts) == len(LABELS)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_at_most_k_classes(k):
    h = label_histograms(LABELS, partition(LABELS, N_CLIENTS, "pathological", seed=0, classes_per_client=k), 10)
    assert (np.count_nonzero(h, axis=1) <= k).all()


def test_quantity_sizes_vary_strongly():
    sizes = np.array([len(p) for p in partition(LABELS, N_CLIENTS, "quantity", seed=0, alpha=0.5)])
    assert sizes.max() >= 5 * sizes.min()


@pytest.mark.parametrize(("scheme", "routes"), [
    ("exclusive-1", {1: 9}),
    ("exclusive-2", {0: 9, 1: 8}),
    ("exclusive-3", {0: 9, 1: 8, 2: 7}),
])
def test_exclusive_maverick_owns_its_class(scheme, routes, all_parts):
    parts = all_parts[scheme]
    h = label_histograms(LABELS, parts, 10)
    for cls, client in routes.items():
        assert owners(parts, LABELS, cls) == [client]
        assert h[client, cls] == 60  # all of it
    others = [c for c in range(10) if c not in routes]
    assert (h[:, others] >= 1).all()  # everyone, Mavericks included, gets the dealt classes


def test_shared_2_splits_91_9(all_parts):
    h = label_histograms(LABELS, all_parts["shared-2"], 10)
    assert h[8, 1] == 55 and h[9, 1] == 5  # round(60 / 1.1) = 55
    assert h[:8, 1].sum() == 0


def test_shared_3_spreads_over_last_three(all_parts):
    h = label_histograms(LABELS, all_parts["shared-3"], 10)
    assert h[7:, 1].sum() == 60 and h[:7, 1].sum() == 0
    assert (h[7:, 1] > 0).all()


def test_quantity_maverick_has_10x(all_parts):
    sizes = np.array([len(p) for p in all_parts["quantity-maverick"]])
    assert sizes[-1] == 312  # 600 over 19 shards: 0..10 of 32, 11..18 of 31; shards 9..18 = 2*32 + 8*31
    assert 9.5 <= sizes[-1] / np.median(sizes[:-1]) <= 10.5


def test_missing_1_drops_class(all_parts):
    assert owners(all_parts["missing-1"], LABELS, 1) == []


def test_maverick_only(all_parts):
    parts = all_parts["maverick-only"]
    np.testing.assert_array_equal(np.unique(LABELS[parts[-1]]), [1])
    assert len(parts[-1]) == 60
    assert owners(parts, LABELS, 1) == [9]


def test_maverick_class_parameter():
    parts = partition(LABELS, 5, "exclusive-1", seed=0, maverick_class=7)
    assert owners(parts, LABELS, 7) == [4]


def test_too_many_clients_names_counts():
    with pytest.raises(PartitionError, match=r"2000 clients but the 'digits' train split has only 600 images"):
        partition(LABELS, 2000, "iid", seed=0, source="the 'digits' train split")


def test_scheme_that_starves_a_client_names_counts():
    # maverick-only deals 540 non-class-1 samples over 599 clients: some get none
    with pytest.raises(PartitionError, match=r"600 clients but the dataset has only 600 images"):
        partition(LABELS, 600, "maverick-only", seed=0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"scheme": "nope"}, r"unknown partition scheme 'nope'; known: iid, dirichlet"),
    ({"scheme": "exclusive-3", "num_clients": 2}, r"exclusive-3: needs at least 3 clients, got 2"),
    ({"scheme": "exclusive-1", "maverick_class": 12}, r"Maverick class\(es\) \[12\] do not occur"),
    ({"scheme": "pathological", "classes_per_client": 11}, r"classes_per_client=11 but .* has 10 classes"),
    ({"scheme": "dirichlet", "alpha": 0.0}, r"alpha must be > 0"),
    ({"num_clients": 0}, r"num_clients must be a positive int"),
])
def test_bad_arguments(kwargs, match):
    args = {"num_clients": N_CLIENTS, "scheme": "iid", "seed": 0} | kwargs
    with pytest.raises(PartitionError, match=match):
        partition(LABELS, **args)


def test_label_histograms_hand_checked():
    labels = np.array([0, 1, 1, 2, 2, 2])
    h = label_histograms(labels, [np.array([0, 1]), np.array([2, 3, 4, 5])], 3)
    np.testing.assert_array_equal(h, [[1, 1, 0], [0, 1, 3]])
