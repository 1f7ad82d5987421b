"""Streaming aggregation (strategies/fold.py, strategies/fedavg.py): replies folded as they
arrive, in partition order, never held together; the same numbers as a list of replies."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fedsim.records.ledger import LedgerWriter, load_ledger
from fedsim.records.round_log import RoundLog
from strategies.fedavg import FedAvg
from strategies.fold import InOrder, WeightedSum
from strategies.unlearning.ledger import Ledgered
from strategies.wrappers.metered import Metered
from strategies.wrappers.recording import Recording
from tests.test_fedavg import FakeGrid, arrays, make_clients, reply

pytestmark = pytest.mark.usefixtures('task_identity')
ROUND = 1
SHAPE = (64, 64)


def test_in_order_releases_in_expected_order_whatever_the_arrival():
    buf = InOrder([1, 3, 5, 7])
    out = []
    for key in (5, 3, 9, 1, 7):
        out += list(buf.push(key, key))
    assert out == [1, 3, 5, 7]  # released as soon as their predecessors came
    assert buf.held == 1
    assert list(buf.rest()) == [9]  # not expected: folded last, in key order


def test_in_order_holds_only_what_waits_for_an_earlier_key():
    buf = InOrder(list(range(10)))
    assert list(buf.push(1, "b")) == [] and buf.held == 1
    assert list(buf.push(0, None)) == [None, "b"] and buf.held == 0  # a rejected reply still advances


def test_weighted_sum_is_the_mean_when_the_guess_is_wrong():
    ref = arrays(w=[[0.0, 0.0]])
    folded = WeightedSum(ref, guess=21.0)  # declared counts; the replies say 1 and 3
    folded.add(arrays(w=[[1, 2]]), 1.0)
    folded.add(arrays(w=[[5, 6]]), 3.0)
    # each float32 product x * (w / 21) rounds; rescaled by 21 / 4 the mean is exact to 2 ulp
    np.testing.assert_allclose(folded.mean()["w"].numpy(), np.array([[4.0, 5.0]], np.float32), rtol=2.4e-7, atol=0)


def test_weighted_sum_with_the_right_guess_matches_the_list_arithmetic_bit_for_bit():
    """x_i * (w_i / total) in float32, summed in float64: what averaging a list of replies did."""
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=SHAPE).astype(np.float32) for _ in range(7)]
    ws = [float(n) for n in rng.integers(1, 50, size=7)]
    total = sum(ws)
    expect = np.zeros(SHAPE)
    for x, w in zip(xs, ws):
        expect += x * (w / total)
    folded = WeightedSum(arrays(w=np.zeros(SHAPE)), guess=total)
    for x, w in zip(xs, ws):
        folded.add(arrays(w=x), w)
    assert folded.mean()["w"].numpy().tobytes() == expect.astype(np.float32).tobytes()


def _replies(pids, rng):
    return [reply(p, 10 + p, float(p), w=rng.normal(size=SHAPE).astype(np.float32)) for p in pids]


def _strategy(n, log=None):
    strategy = FedAvg(make_clients(n), n, seed=0, log_book=log or RoundLog())
    list(strategy.configure_train(ROUND, arrays(w=np.zeros(SHAPE)), ConfigRecord({}), FakeGrid(make_clients(n))))
    return strategy


def test_arrival_order_does_not_change_a_bit():
    rng = np.random.default_rng(1)
    replies = _replies(range(12), rng)
    a, ma = _strategy(12).aggregate_train(ROUND, list(replies))
    shuffled = [replies[i] for i in np.random.default_rng(2).permutation(12)]
    b, mb = _strategy(12).aggregate_train(ROUND, iter(shuffled))
    assert a["w"].numpy().tobytes() == b["w"].numpy().tobytes()
    assert dict(ma) == dict(mb)


def test_the_stack_holds_one_reply_at_a_time(tmp_path):
    """Metered(Recording(Ledgered(FedAvg))) over a stream in partition order: when reply k is
    made, every earlier reply is already gone (no layer kept it)."""
    n = 10
    clients = make_clients(n)
    log = RoundLog()
    inner = FedAvg(clients, n, seed=0, log_book=log)
    writer = LedgerWriter(tmp_path, seed=0, every=1, max_bytes=1e9)
    stack = Metered(Recording(Ledgered(inner, writer, clients), tmp_path, clients, partitions={3}), log)
    list(stack.configure_train(ROUND, arrays(w=np.zeros(SHAPE)), ConfigRecord({}), FakeGrid(clients)))
    rng = np.random.default_rng(3)
    refs: list[weakref.ref] = []
    alive_at: list[int] = []

    def stream():
        for pid in range(n):
            gc.collect()
            alive_at.append(sum(r() is not None for r in refs))
            msg = _replies([pid], rng)[0]
            refs.append(weakref.ref(msg.content))
            yield msg
            del msg

    out, _ = stack.aggregate_train(ROUND, stream())
    assert max(alive_at) <= 1, alive_at  # the generator's last reply at most
    assert out is not None and log.get(ROUND)["bytes_up"] > 0
    assert load_ledger(tmp_path).participants(ROUND) == {p: 10 + p for p in range(n)}
    assert sorted(p.name for p in (tmp_path / "ledger" / "round_001").glob("client_*")) == \
        [f"client_{p:04d}.safetensors" for p in range(n)]


def test_a_reply_outvoted_on_metric_keys_leaves_no_ledger_entry(tmp_path):
    clients = make_clients(3)
    inner = FedAvg(clients, 3, seed=0)
    writer = LedgerWriter(tmp_path, seed=0, every=1, max_bytes=1e9)
    stack = Ledgered(inner, writer, clients)
    list(stack.configure_train(ROUND, arrays(w=[[0.0, 0.0]]), ConfigRecord({}), FakeGrid(clients)))
    replies = [reply(0, 10, w=[[9, 9]]), reply(1, 11, w=[[1, 1]]), reply(2, 12, w=[[1, 1]])]
    replies[0].content["metrics"]["other"] = 1.0  # client 0 alone sends another key set
    out, _ = stack.aggregate_train(ROUND, replies)
    np.testing.assert_array_equal(out["w"].numpy(), [[1.0, 1.0]])
    assert load_ledger(tmp_path).participants(ROUND) == {1: 11, 2: 12}
    assert not (tmp_path / "ledger" / "round_001" / "client_0000.safetensors").exists()


def test_the_local_ray_gets_a_small_object_store_and_a_cluster_keeps_its_own(tmp_path):
    """Messages in flight pass through Ray's shared-memory store; at Ray's default size (30 % of RAM)
    its pages fill over rounds (7.8 GB PSS at 1000 clients per round): fedsim caps the Ray it starts."""
    from fedsim.cli.launch import LocalFederation
    from fedsim.config import RunConfig

    capped = LocalFederation(tmp_path, RunConfig(ray_object_store_mb=256)).env
    assert capped["RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES"] == str(256 * 2**20)
    default = LocalFederation(tmp_path, RunConfig(ray_object_store_mb=0)).env
    cluster = LocalFederation(tmp_path, RunConfig(ray_address="127.0.0.1:6379")).env
    assert "RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES" not in default
    assert "RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES" not in cluster and cluster["RAY_ADDRESS"] == "127.0.0.1:6379"
