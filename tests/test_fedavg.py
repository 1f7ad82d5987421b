"""Tests for strategies/fedavg.py, strategies/wrappers/metered.py and strategies/client_registry.py.

Synthetic Flower Messages stand in for client replies: an instruction message
to node n, then ``Message(content, reply_to=instruction)``, which gives the
reply ``src_node_id == n`` exactly as a SuperNode's reply would have. Arrays
are 1x2 so that every aggregate can be checked by hand.
"""

import itertools

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common.serde import message_to_proto, recorddict_to_proto

from fedsim.records.round_log import RoundLog
from strategies.client_registry import ClientInfo, discover_clients
from strategies.fedavg import FedAvg, reply_problem
from strategies.wrappers.metered import Metered, wire_bytes

pytestmark = pytest.mark.usefixtures('task_identity')

ROUND = 1


class FakeGrid:
    """The one Grid method configure_train uses."""

    def __init__(self, node_ids, replies=None):
        self.node_ids = list(node_ids)
        self.replies = replies

    def get_node_ids(self):
        return self.node_ids

    def send_and_receive(self, messages, timeout=None):  # discover_clients
        self.sent = list(messages)
        return self.replies(self.sent)



def assert_mean(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal to 2 float32 ulp: where the replies' counts are not the declared ones the running
    sum was scaled by, it is rescaled at the end (strategies/fold.py), and each float32
    product x * (w / declared total) has rounded."""
    np.testing.assert_allclose(actual, expected, rtol=2.4e-7, atol=0)

def node_of(pid: int) -> int:
    return 1000 + 7 * pid  # node ids unrelated to partition ids, like a real run's


def make_clients(n: int) -> dict[int, ClientInfo]:
    return {node_of(p): ClientInfo(node_of(p), p, 10 + p, np.zeros(2, np.int64)) for p in range(n)}


def arrays(**named) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in named.items()})


def instruction(node_id: int) -> Message:
    return Message(RecordDict({"config": ConfigRecord({"server-round": ROUND})}),
                   dst_node_id=node_id, message_type=MessageType.TRAIN)


def reply(pid: int, n: int, loss: float = 0.0, **named) -> Message:
    content = RecordDict({"arrays": arrays(**named),
                          "metrics": MetricRecord({"num-examples": n, "train-loss": loss}),
                          "meta": ConfigRecord({"partition-id": pid})})
    return Message(content, reply_to=instruction(node_of(pid)))


def error_reply(pid: int) -> Message:
    return Message(Error(code=0, reason="boom"), reply_to=instruction(node_of(pid)))


def configured(n_clients: int, k: int, global_arrays: ArrayRecord, *, mode="fedavg", server_lr=1.0, seed=0):
    """A FedAvg that has run configure_train for ROUND (so it knows the global model)."""
    log = RoundLog()
    strategy = FedAvg(make_clients(n_clients), k, seed=seed, log_book=log, mode=mode, server_lr=server_lr)
    messages = list(strategy.configure_train(ROUND, global_arrays, ConfigRecord({}),
                                             FakeGrid(make_clients(n_clients))))
    return strategy, log, messages


W0 = {"w": [[0.0, 0.0]]}


# --- (a) sample-weighted mean ---

def test_aggregate_is_sample_weighted_mean():
    strategy, log, _ = configured(2, 2, arrays(**W0))
    out, metrics = strategy.aggregate_train(ROUND, [reply(0, 1, 1.0, w=[[1, 2]]), reply(1, 3, 3.0, w=[[5, 6]])])
    # (1 * [1, 2] + 3 * [5, 6]) / 4 = [4, 5], to float32 rounding: the replies' counts (1, 3) are
    # not the declared ones the sum was scaled by (strategies/fold.py)
    assert_mean(out["w"].numpy(), np.array([[4.0, 5.0]], np.float32))
    assert metrics["train-loss"] == pytest.approx(2.5)  # (1 * 1 + 3 * 3) / 4
    row = log.get(ROUND)
    assert row["train_loss"] == pytest.approx(2.5)
    assert (row["clients_sampled"], row["clients_failed"], row["clients_rejected"]) == (2, 0, 0)


# --- (b) unsound replies are rejected ---

@pytest.mark.parametrize("bad, why", [
    (dict(w=[[np.nan, 0.0]]), "non-finite"),
    (dict(w=[[np.inf, 0.0]]), "non-finite"),
    (dict(w=[[1.0, 2.0, 3.0]]), "shape"),
    (dict(w=[[1.0, 2.0]], extra=[1.0]), "keys"),
    (dict(v=[[1.0, 2.0]]), "keys"),
])
def test_reply_problem_names_the_problem(bad, why):
    assert why in reply_problem(reply(9, 100, **bad), arrays(**W0))
    assert reply_problem(reply(9, 100, w=[[1.0, 2.0]]), arrays(**W0)) is None


def test_reply_without_num_examples_is_a_problem():
    msg = Message(RecordDict({"arrays": arrays(w=[[1, 2]]), "metrics": MetricRecord({"train-loss": 1.0})}),
                  reply_to=instruction(node_of(0)))
    assert "num-examples" in reply_problem(msg, arrays(**W0))
    no_arrays = Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=instruction(node_of(0)))
    assert "exactly one ArrayRecord" in reply_problem(no_arrays, arrays(**W0))


def test_nan_and_wrong_shape_replies_are_rejected_not_aggregated():
    strategy, log, _ = configured(4, 4, arrays(**W0))
    replies = [reply(0, 1, w=[[1, 2]]), reply(1, 3, w=[[5, 6]]),
               reply(2, 100, w=[[np.nan, 0.0]]), reply(3, 100, w=[[1.0, 2.0, 3.0]])]
    out, _ = strategy.aggregate_train(ROUND, replies)
    assert_mean(out["w"].numpy(), np.array([[4.0, 5.0]], np.float32))
    row = log.get(ROUND)
    assert (row["clients_rejected"], row["clients_failed"]) == (2, 0)


def test_all_rejected_gives_no_update():
    strategy, log, _ = configured(2, 2, arrays(**W0))
    assert strategy.aggregate_train(ROUND, [reply(0, 1, w=[[np.nan, 0]]), reply(1, 1, w=[[1]])]) == (None, None)
    assert log.get(ROUND)["clients_rejected"] == 2


def test_reply_with_extra_record_is_rejected_not_fatal():
    strategy, log, _ = configured(3, 3, arrays(**W0))
    odd = reply(2, 100, w=[[9, 9]])
    odd.content["extra"] = MetricRecord({"x": 1.0})  # a second MetricRecord
    out, _ = strategy.aggregate_train(ROUND, [reply(0, 1, w=[[1, 2]]), reply(1, 3, w=[[5, 6]]), odd])
    np.testing.assert_array_equal(out["w"].numpy(), np.array([[4.0, 5.0]], np.float32))
    assert log.get(ROUND)["clients_rejected"] == 1


# --- (c) failures ---

def test_error_reply_counts_as_failed_and_round_still_aggregates():
    strategy, log, _ = configured(3, 3, arrays(**W0))
    out, _ = strategy.aggregate_train(ROUND, [reply(0, 1, w=[[1, 2]]), error_reply(1), reply(2, 3, w=[[5, 6]])])
    np.testing.assert_array_equal(out["w"].numpy(), np.array([[4.0, 5.0]], np.float32))
    row = log.get(ROUND)
    assert (row["clients_failed"], row["clients_rejected"]) == (1, 0)
    assert "client error: boom" == reply_problem(error_reply(1), arrays(**W0))


def test_missing_replies_count_as_failed():
    strategy, log, messages = configured(3, 3, arrays(**W0))
    assert len(messages) == 3
    strategy.aggregate_train(ROUND, [reply(0, 1, w=[[1, 2]]), reply(1, 3, w=[[5, 6]])])  # one timed out
    assert log.get(ROUND)["clients_failed"] == 1


# --- (d) selection ---

def test_select_is_seeded_by_seed_and_round():
    candidates = sorted(make_clients(20).values(), key=lambda c: c.partition_id)
    a = FedAvg(make_clients(20), 5, seed=0)
    b = FedAvg(make_clients(20), 5, seed=0)
    pids = lambda chosen: [c.partition_id for c in chosen]  # noqa: E731
    r1 = pids(a.select(1, candidates))
    assert r1 == pids(b.select(1, candidates))  # same seed, same round
    assert len(set(r1)) == 5 and all(0 <= p < 20 for p in r1)  # K distinct
    assert r1 != pids(a.select(2, candidates))  # another round
    assert r1 != pids(FedAvg(make_clients(20), 5, seed=1).select(1, candidates))  # another seed
    assert len(a.select(1, candidates[:3])) == 3  # fewer candidates than K: all of them


def test_configure_train_addresses_chosen_nodes():
    clients = make_clients(10)
    log = RoundLog()
    strategy = FedAvg(clients, 4, seed=0, log_book=log)
    connected = [n for n in clients if n != node_of(3)]  # partition 3 is not connected
    messages = list(strategy.configure_train(ROUND, arrays(**W0), ConfigRecord({"lr": 0.1}), FakeGrid(connected)))
    candidates = sorted((clients[n] for n in connected), key=lambda c: c.partition_id)
    chosen = strategy.select(ROUND, candidates)
    assert sorted(m.metadata.dst_node_id for m in messages) == sorted(c.node_id for c in chosen)
    assert len({m.metadata.dst_node_id for m in messages}) == 4
    assert node_of(3) not in {m.metadata.dst_node_id for m in messages}
    for m in messages:
        assert m.metadata.message_type == MessageType.TRAIN
        assert m.content["config"]["server-round"] == ROUND and m.content["config"]["lr"] == 0.1
        np.testing.assert_array_equal(m.content["arrays"]["w"].numpy(), np.zeros((1, 2), np.float32))
    row = log.get(ROUND)
    assert row["clients_sampled"] == 4
    assert row["selected"] == " ".join(str(c.partition_id) for c in chosen)


# --- (e) FedSGD ---

def test_fedsgd_steps_against_weighted_mean_gradient():
    strategy, _, _ = configured(2, 2, arrays(w=[[1.0, 1.0]]), mode="fedsgd", server_lr=0.5)
    out, _ = strategy.aggregate_train(ROUND, [reply(0, 1, w=[[1, 2]]), reply(1, 3, w=[[5, 6]])])
    # mean gradient [4, 5]; w <- [1, 1] - 0.5 * [4, 5] = [-1, -1.5]
    w = out["w"].numpy()
    assert_mean(w, np.array([[-1.0, -1.5]], np.float32))
    assert w.dtype == np.float32


# --- (f) Metered ---
# metered.py counts each message's payload, its content RecordDict as Flower's protobuf,
# and leaves the metadata envelope out (its varint ids vary per run; see the module docstring).

def _metered_round(width: int, node_offset: int = 0):
    log = RoundLog()
    clients = {n + node_offset: ClientInfo(n + node_offset, c.partition_id, c.num_examples, c.label_hist)
               for n, c in make_clients(3).items()}
    metered = Metered(FedAvg(clients, 3, seed=0, log_book=log), log)
    messages = list(metered.configure_train(ROUND, arrays(w=np.zeros((1, width))), ConfigRecord({}),
                                            FakeGrid(clients)))
    replies = [Message(reply(p, 1, w=np.full((1, width), float(p))).content, reply_to=m)
               for p, m in enumerate(sorted(messages, key=lambda m: m.metadata.dst_node_id))]
    metered.aggregate_train(ROUND, replies)
    return log.get(ROUND), messages, replies


def test_metered_counts_protobuf_payload_bytes():
    row, messages, replies = _metered_round(2)
    assert len(messages) == len(replies) == 3
    assert row["bytes_down"] == sum(recorddict_to_proto(m.content).ByteSize() for m in messages)
    assert row["bytes_up"] == sum(recorddict_to_proto(m.content).ByteSize() for m in replies)
    for m in messages + replies:
        envelope = message_to_proto(m).ByteSize() - wire_bytes(m)
        assert 0 < envelope < 200  # only the metadata is left out


def test_metered_bigger_array_more_bytes():
    small, _, _ = _metered_round(2)
    big, _, _ = _metered_round(200)
    # 198 more float32 values per message, 3 messages each way: at least 3 * 198 * 4 bytes more
    assert big["bytes_down"] - small["bytes_down"] >= 3 * 198 * 4
    assert big["bytes_up"] - small["bytes_up"] >= 3 * 198 * 4


def test_metered_bytes_do_not_depend_on_node_ids():
    a, _, _ = _metered_round(2)
    b, _, _ = _metered_round(2, node_offset=10**12)  # node ids are random per run
    assert (a["bytes_down"], a["bytes_up"]) == (b["bytes_down"], b["bytes_up"])


def test_metered_error_reply_has_no_payload():
    assert wire_bytes(error_reply(0)) == 0


def test_metered_forwards_inner_state():
    log = RoundLog()
    inner = FedAvg(make_clients(3), 2, seed=0, log_book=log)
    metered = Metered(inner, log)
    assert metered.clients is inner.clients and metered.clients_per_round == 2


# --- (g) order independence ---

def test_aggregate_does_not_depend_on_reply_order():
    rng = np.random.default_rng(0)
    values = [(rng.standard_normal((1, 64)) * 10.0 ** rng.integers(-3, 4)).astype(np.float32) for _ in range(5)]
    sizes = [1, 3, 7, 2, 5]
    outs = []
    for order in itertools.islice(itertools.permutations(range(5)), 0, 120, 7):
        strategy, _, _ = configured(5, 5, arrays(w=np.zeros((1, 64))))
        out, metrics = strategy.aggregate_train(ROUND, [reply(p, sizes[p], float(p), w=values[p]) for p in order])
        outs.append((out["w"].numpy().tobytes(), metrics["train-loss"]))
    assert len(set(outs)) == 1  # bitwise equal
    expected = sum(s * v.astype(np.float64) for s, v in zip(sizes, values)) / sum(sizes)
    np.testing.assert_allclose(np.frombuffer(outs[0][0], np.float32).reshape(1, 64), expected, rtol=1e-5, atol=1e-6)


# --- client registry ---

def test_discover_clients_maps_node_to_partition():
    def answer(sent):
        out = []
        for i, m in enumerate(sent):
            if i == 1:
                out.append(Message(Error(code=0, reason="down"), reply_to=m))
                continue
            info = ConfigRecord({"partition-id": i + 10, "num-examples": 5 * (i + 1), "label-hist": [i, 1]})
            out.append(Message(RecordDict({"info": info}), reply_to=m))
        return out

    grid = FakeGrid([30, 10, 20], replies=answer)
    clients = discover_clients(grid)
    assert [m.metadata.dst_node_id for m in grid.sent] == [10, 20, 30]  # asked once each, sorted
    assert all(m.metadata.message_type == MessageType.QUERY for m in grid.sent)
    assert set(clients) == {10, 30}  # node 20 answered with an error: left out
    assert clients[10].node_id == 10 and clients[10].partition_id == 10 and clients[10].num_examples == 5
    assert clients[30].partition_id == 12 and clients[30].label_hist.tolist() == [2, 1]
    assert clients[30].label_hist.dtype == np.int64


# --- (f) pluggable selectors, weighting, Maverick logging ---

def test_uniform_weighting_takes_the_plain_mean():
    log = RoundLog()
    strategy = FedAvg(make_clients(2), 2, seed=0, log_book=log, weighting="uniform")
    list(strategy.configure_train(ROUND, arrays(**W0), ConfigRecord({}), FakeGrid(make_clients(2))))
    out, _ = strategy.aggregate_train(ROUND, [reply(0, 1, w=[[1, 2]]), reply(1, 3, w=[[5, 6]])])
    np.testing.assert_array_equal(out["w"].numpy(), np.array([[3.0, 4.0]], np.float32))


def test_maverick_probability_and_selections_are_logged():
    from strategies.selection.selectors import FedEMDSelector

    clients = make_clients(4)
    hists = {0: [10, 10], 1: [10, 10], 2: [10, 10], 3: [0, 30]}  # partition 3 alone holds class 1 mostly
    clients = {n: ClientInfo(c.node_id, c.partition_id, 20, np.array(hists[c.partition_id]))
               for n, c in clients.items()}
    log = RoundLog()
    sel = FedEMDSelector(sorted(clients.values(), key=lambda c: c.partition_id), alpha=2.0, beta=0.0)
    strategy = FedAvg(clients, 2, seed=0, log_book=log, selector=sel, mavericks=[3])
    assert strategy.metric_columns == ["maverick_3_prob", "maverick_3_selections", "typical_prob"]
    total = 0
    for rnd in (1, 2, 3):
        list(strategy.configure_train(rnd, arrays(**W0), ConfigRecord({}), FakeGrid(clients)))
        row = log.get(rnd)
        total += "3" in row["selected"].split()
        assert row["maverick_3_selections"] == total
        assert row["maverick_3_prob"] > row["typical_prob"]  # far from the global distribution


def test_shapley_selector_values_coalitions_of_this_rounds_replies():
    """Utility = the aggregated w[0, 0]; client 0 moves it to 4, client 1 to 0: the coalition
    values are U() = 0 (global), U(0) = 4, U(1) = 0, U(0, 1) = 2 (equal sizes)."""
    from strategies.selection.shapley import ShapleySelector

    log = RoundLog()
    sel = ShapleySelector(decay=0.0)
    strategy = FedAvg(make_clients(2), 2, seed=0, log_book=log, selector=sel,
                      utility=lambda a: float(a["w"].numpy()[0, 0]), weighting="uniform")
    list(strategy.configure_train(ROUND, arrays(**W0), ConfigRecord({}), FakeGrid(make_clients(2))))
    strategy.aggregate_train(ROUND, [reply(0, 1, w=[[4, 0]]), reply(1, 1, w=[[0, 0]])])
    # phi_0 = (U(0) - U()) / 2 + (U(0, 1) - U(1)) / 2 = 3; phi_1 = (0 + (2 - 4)) / 2 = -1
    assert sel.values == pytest.approx({0: 3.0, 1: -1.0})


def test_valuing_selector_without_utility_is_refused():
    from strategies.selection.shapley import ShapleySelector

    with pytest.raises(ValueError, match="utility"):
        FedAvg(make_clients(2), 2, seed=0, selector=ShapleySelector())


def test_fedemd_counts_a_drawn_client_in_p_cur_even_when_its_reply_fails():
    """p_cur holds what the server *asked* to be trained on (fedemd.md, issue 16): a client
    that is drawn and then fails still counts, at draw time, before any reply arrives."""
    from strategies.selection.selectors import FedEMDSelector

    clients = {node_of(p): ClientInfo(node_of(p), p, 10, np.eye(2, dtype=np.int64)[p % 2] * 10) for p in range(6)}
    selector = FedEMDSelector(list(clients.values()))
    strategy = FedAvg(clients, 3, seed=0, log_book=RoundLog(), selector=selector)
    messages = list(strategy.configure_train(ROUND, arrays(w=[0.0]), ConfigRecord({}), FakeGrid(clients)))
    drawn = [clients[m.metadata.dst_node_id] for m in messages]
    expected = sum(np.asarray(c.label_hist, dtype=float) for c in drawn)
    np.testing.assert_array_equal(selector.cum, expected)  # counted at draw time
    failed = [error_reply(c.partition_id) for c in drawn[:2]]
    ok = [reply(drawn[2].partition_id, 10, w=[1.0])]
    strategy.aggregate_train(ROUND, failed + ok)
    np.testing.assert_array_equal(selector.cum, expected)  # the failures are not taken back
