"""strategies/wrappers/recording.py + fedsim/records/observations.py: the server records exactly what arrived."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedsim.config import ConfigError, RunConfig, parse_ids
from fedsim.records.observations import list_observations, load
from fedsim.records.round_log import RoundLog
from strategies import build_strategy
from strategies.client_registry import ClientInfo
from strategies.fedavg import FedAvg
from strategies.wrappers.recording import Recording

pytestmark = pytest.mark.usefixtures('task_identity')


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return self.nodes


CLIENTS = {100 + p: ClientInfo(100 + p, p, 5, np.zeros(2, np.int64)) for p in range(4)}
GLOBAL = ArrayRecord({"w": Array(np.array([[1.0, 2.0]], dtype=np.float32))})


def reply_to(msg: Message, w, payload="weights") -> Message:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.asarray(w, dtype=np.float32))}),
                          "metrics": MetricRecord({"num-examples": 5, "train-loss": 0.5}),
                          "meta": ConfigRecord({"partition-id": CLIENTS[msg.metadata.dst_node_id].partition_id,
                                                "payload": payload})})
    return Message(content, reply_to=msg)


def run_round(strategy, rnd=1):
    messages = list(strategy.configure_train(rnd, GLOBAL, ConfigRecord({"lr": 0.1}), FakeGrid(list(CLIENTS))))
    replies = [reply_to(m, [[1.5, 2.5]]) for m in messages]
    return messages, strategy.aggregate_train(rnd, replies)


def test_records_chosen_clients_only(tmp_path) -> None:
    inner = FedAvg(CLIENTS, 4, seed=0, log_book=RoundLog())
    strategy = Recording(inner, tmp_path, CLIENTS, partitions={1, 3}, rounds={1})
    _, (arrays, _) = run_round(strategy, 1)
    run_round(strategy, 2)  # not a recorded round
    paths = list_observations(tmp_path)
    assert [p.name for p in paths] == ["client_0001", "client_0003"]
    assert all(p.parent.name == "round_001" for p in paths)
    obs = load(paths[0])
    assert obs.partition_id == 1 and obs.num_examples == 5 and obs.payload == "weights"
    assert obs.config["lr"] == pytest.approx(0.1) and obs.config["server-round"] == 1
    assert torch.allclose(obs.update()["w"], torch.tensor([[0.5, 0.5]]))
    # aggregation is untouched by the wrapper
    assert np.allclose(arrays["w"].numpy(), [[1.5, 2.5]])


def test_build_strategy_adds_recording_when_asked(tmp_path) -> None:
    cfg = RunConfig(num_clients=4, clients_per_round=2, record_clients="all", out_dir=str(tmp_path))
    run_round(build_strategy(cfg, CLIENTS, RoundLog()))
    assert len(list_observations(tmp_path)) == 2
    plain = build_strategy(RunConfig(num_clients=4, clients_per_round=2), CLIENTS, RoundLog())
    assert not isinstance(plain.inner, Recording)


def test_parse_ids() -> None:
    assert parse_ids("all") is None and parse_ids("") == set() and parse_ids("0 7,12") == {0, 7, 12}
    with pytest.raises(ConfigError, match="record-clients"):
        RunConfig(record_clients="first")


def test_load_missing(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="meta.json"):
        load(tmp_path / "nope")


def test_secrets_are_asked_of_recorded_clients_in_simulation_only(tmp_path) -> None:
    """build_strategy(secrets_root=...) (the ServerApp passes it in simulation only) marks the TRAIN
    messages of recorded clients in recorded rounds; the mark is not metered and not part of the
    recorded observation; without secrets_root (a deployment) no message is marked."""
    from fedsim.records.secrets import RECORD
    from strategies.wrappers.secrets import AskSecrets

    cfg = RunConfig(num_clients=4, clients_per_round=4, record_clients="1 3", record_rounds="1",
                    out_dir=str(tmp_path))
    logs = {True: RoundLog(), False: RoundLog()}
    marked = {}
    for simulated, log in logs.items():
        strategy = build_strategy(cfg, CLIENTS, log, secrets_root=tmp_path if simulated else None)
        assert isinstance(strategy, AskSecrets) == simulated
        for rnd in (1, 2):
            messages, _ = run_round(strategy, rnd)
            marked[simulated, rnd] = sorted(CLIENTS[m.metadata.dst_node_id].partition_id for m in messages
                                            if RECORD in m.content.config_records)
            for m in messages:
                if RECORD in m.content.config_records:
                    assert m.content[RECORD]["dir"] == str(tmp_path)
    assert marked == {(True, 1): [1, 3], (True, 2): [], (False, 1): [], (False, 2): []}
    assert logs[True].get(1)["bytes_down"] == logs[False].get(1)["bytes_down"]  # instrumentation, not traffic
    obs = load(list_observations(tmp_path)[0])
    assert "dir" not in obs.config and RECORD not in obs.config
