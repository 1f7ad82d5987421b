"""The training ledger (fedsim/records/ledger.py, strategies/unlearning/ledger.py): rounds driven in one
process through the real strategy stack, with a fake client whose updates are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict

from fedsim.app.compression_mod import compression_mod
from fedsim.compression.codecs import encode_update, make_codec
from fedsim.config import RunConfig
from fedsim.records.ledger import load_ledger
from fedsim.records.round_log import RoundLog
from fedsim.records.wire import to_numpy_dict
from strategies import build_strategy
from strategies.client_registry import ClientInfo

pytestmark = pytest.mark.usefixtures('task_identity')

N = 4
CLIENTS = {200 + p: ClientInfo(200 + p, p, 10 + p, np.zeros(2, np.int64)) for p in range(N)}
SHAPES = {"w": (8, 6), "b": (6,)}
W0 = {k: np.random.default_rng(0).normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


class FakeGrid:
    def get_node_ids(self):
        return list(CLIENTS)


def step(pid: int, rnd: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 * rnd + pid)
    return {k: (0.1 * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}


def fake_train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    rnd = int(msg.content["config"]["server-round"])
    sent = to_numpy_dict(msg.content["arrays"])
    content = RecordDict({"arrays": ArrayRecord({k: Array(sent[k] + v) for k, v in step(pid, rnd).items()}),
                          "metrics": MetricRecord({"num-examples": 10 + pid, "train-loss": 0.0}),
                          "meta": ConfigRecord({"partition-id": pid, "payload": "weights"})})
    return Message(content, reply_to=msg)


def run(tmp_path, rounds: int, fail=(), clients=None, **overrides):
    """fail: (round, partition id) pairs whose reply is an error."""
    cfg = RunConfig(num_clients=N, clients_per_round=overrides.pop("clients_per_round", 2), model="cnn",
                    out_dir=str(tmp_path), **overrides)
    log = RoundLog()
    strategy = build_strategy(cfg, clients or CLIENTS, log)
    ctx = {n: Context(1, n, {"partition-id": c.partition_id}, RecordDict(), cfg.to_flwr()) for n, c in CLIENTS.items()}
    arrays = ArrayRecord({k: Array(v) for k, v in W0.items()})
    globals_ = [to_numpy_dict(arrays)]
    for rnd in range(1, rounds + 1):
        replies = []
        for m in strategy.configure_train(rnd, arrays, ConfigRecord({}), FakeGrid()):
            pid = CLIENTS[m.metadata.dst_node_id].partition_id
            if (rnd, pid) in fail:
                replies.append(Message(Error(code=0, reason="boom"), reply_to=m))
            else:
                replies.append(compression_mod(m, ctx[m.metadata.dst_node_id], fake_train))
        new, _ = strategy.aggregate_train(rnd, replies)
        arrays = new if new is not None else arrays
        globals_.append(to_numpy_dict(arrays))
    return log, globals_


def test_ledger_logs_participants_and_stores_updates_every_few_rounds(tmp_path):
    log, globals_ = run(tmp_path, 4, ledger_every=2)
    ledger = load_ledger(tmp_path)
    assert ledger.seed == 0 and ledger.every == 2 and ledger.stored_rounds() == [1, 3]
    for rnd in (1, 2, 3, 4):
        chosen = sorted(int(p) for p in log.get(rnd)["selected"].split())
        assert ledger.participants(rnd) == {p: 10 + p for p in chosen}
    for k in SHAPES:
        assert torch.equal(ledger.initial()[k], torch.from_numpy(W0[k]))  # full precision: replays start here
        np.testing.assert_allclose(ledger.global_at(3)[k].numpy(), globals_[2][k], atol=2e-3)
    for p in ledger.participants(3):
        for k, v in step(p, 3).items():
            np.testing.assert_allclose(ledger.update(3, p)[k].numpy(), v, atol=1e-3)  # float16
    with pytest.raises(FileNotFoundError, match="stored rounds: \\[1, 3\\]"):
        ledger.update(2, next(iter(ledger.participants(2))))


def test_failed_replies_are_not_participants(tmp_path):
    log, _ = run(tmp_path, 1, clients_per_round=4, fail={(1, 2)})
    assert sorted(load_ledger(tmp_path).participants(1)) == [0, 1, 3]
    assert log.get(1)["clients_failed"] == 1


def test_ledger_stops_storing_at_its_bound_but_keeps_the_log(tmp_path):
    run(tmp_path, 3, ledger_every=1, ledger_max_mb=1e-4)  # 100 bytes: not even one round
    ledger = load_ledger(tmp_path)
    assert ledger.stored_rounds() == [] and ledger.stopped_storing_at == 1
    assert [r["round"] for r in ledger.rounds] == [1, 2, 3]
    assert not list((tmp_path / "ledger").glob("round_*"))


def test_compressed_runs_store_the_decoded_updates(tmp_path):
    run(tmp_path, 1, clients_per_round=4, ledger_every=1, compression="stc", keep_ratio=0.25)
    ledger = load_ledger(tmp_path)
    codec = make_codec("stc", keep_ratio=0.25)
    for p in range(N):
        sent = encode_update(codec, step(p, 1))[1]
        for k in SHAPES:
            np.testing.assert_allclose(ledger.update(1, p)[k].numpy(), sent[k], atol=1e-3)


def test_no_ledger_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no ledger"):
        load_ledger(tmp_path)


def test_build_strategy_without_a_run_folder_keeps_no_ledger(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_strategy(RunConfig(num_clients=N, clients_per_round=2), CLIENTS, RoundLog())
    assert not (tmp_path / "ledger").exists()


def test_replay_without_a_request_reproduces_the_run(tmp_path):
    log_a, models_a = run(tmp_path / "a", 4)
    log_b, models_b = run(tmp_path / "b", 4, replay=str(tmp_path / "a"))
    for rnd in (1, 2, 3, 4):
        assert log_a.get(rnd)["selected"] == log_b.get(rnd)["selected"]
        for k in SHAPES:
            np.testing.assert_array_equal(models_a[rnd][k], models_b[rnd][k])


def test_replay_leaves_out_a_client_without_data(tmp_path):
    """A client named in forget-clients declares 0 examples (its workspace holds none):
    the replay trains every other participant of every round, and only them."""
    log_a, _ = run(tmp_path / "a", 4)
    gone = int(log_a.get(1)["selected"].split()[0])
    clients = {n: ClientInfo(c.node_id, c.partition_id, 0 if c.partition_id == gone else c.num_examples,
                             c.label_hist) for n, c in CLIENTS.items()}
    log_b, _ = run(tmp_path / "b", 4, clients=clients, replay=str(tmp_path / "a"), forget_clients=str(gone))
    for rnd in (1, 2, 3, 4):
        expect = [p for p in log_a.get(rnd)["selected"].split() if int(p) != gone]
        assert log_b.get(rnd)["selected"].split() == expect


def test_forget_request_removes_only_the_forgotten_data():
    from fedsim.data.clients import client_partition, dataset

    cfg = RunConfig(num_clients=10, partition="dirichlet", model="cnn")
    labels = dataset(cfg, "train").labels
    before = client_partition(cfg, labels)
    after = client_partition(cfg.replace(forget_clients="3 7", forget_class=4), labels)
    for i, (b, a) in enumerate(zip(before, after)):
        if i in (3, 7):
            assert a.size == 0
        else:
            np.testing.assert_array_equal(a, b[labels[b] != 4])


@pytest.mark.parametrize("overrides, message", [
    ({"forget_clients": "99"}, "not partition ids"),
    ({"forget_class": 12}, "not a class"),
    ({"replay": "/nonexistent"}, "has no ledger"),
])
def test_bad_forget_or_replay_requests_are_one_line(overrides, message):
    from fedsim.cli.preflight import check
    from fedsim.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        check(RunConfig(num_clients=10, model="cnn", **overrides))


def test_replay_needs_enough_rounds_in_the_ledger(tmp_path):
    from fedsim.cli.preflight import check
    from fedsim.config import ConfigError

    run(tmp_path / "a", 2)
    with pytest.raises(ConfigError, match="lists 2 rounds"):
        check(RunConfig(num_clients=N, clients_per_round=2, model="cnn", rounds=3, replay=str(tmp_path / "a")))


# The end-to-end check (a replay through Ray reproduces a run exactly) is
# tests/test_unlearning_e2e.py::test_retrain_with_no_request_reproduces_the_run,
# which reuses that file's trained run.
