"""Misbehaving clients (fedsim/data/malicious.py, fedsim/app/malicious_mod.py, the data-level kinds in
fedsim/data/clients.py): each kind's update or data has the property it promises; honest clients
are untouched; the server's metrics and ledger mark the malicious ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

from fedsim.app.malicious_mod import malicious_mod
from fedsim.config import ConfigError, RunConfig
from fedsim.data.clients import as_held, backdoor_clients, dataset, run_partition
from fedsim.data.malicious import malicious_ids
from fedsim.records.round_log import RoundLog
from fedsim.records.wire import to_numpy_dict
from strategies import build_strategy
from strategies.client_registry import ClientInfo

pytestmark = pytest.mark.usefixtures("task_identity")

N, SHARE, SEED = 20, 0.3, 5
BAD = malicious_ids(SEED, N, SHARE)
SENT = {"w": np.random.default_rng(0).normal(size=(100, 100)).astype(np.float32), "steps": np.array([3], np.int64)}
UPDATE = (0.01 * np.random.default_rng(1).normal(size=(100, 100))).astype(np.float32)


def test_malicious_ids_are_a_seeded_stable_share():
    assert len(BAD) == 6 and BAD == malicious_ids(SEED, N, SHARE) and all(0 <= p < N for p in BAD)
    assert malicious_ids(SEED + 1, N, SHARE) != BAD and malicious_ids(SEED, N, 0.0) == frozenset()


def run_mod(kind: str, pid: int, *, payload: str = "weights", rnd: int = 1) -> dict[str, np.ndarray]:
    ctx = Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid}, state=RecordDict(),
                  run_config={"malicious-share": SHARE, "malicious-kind": kind, "malicious-scale": 4.0,
                              "seed": SEED, "num-clients": N})
    msg = Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in SENT.items()}),
                              "config": ConfigRecord({"server-round": rnd})}),
                  dst_node_id=100 + pid, message_type=MessageType.TRAIN)

    def honest(m: Message, _c: Context) -> Message:
        sent = to_numpy_dict(m.content["arrays"])
        w = UPDATE if payload == "gradient" else sent["w"] + UPDATE
        content = RecordDict({"arrays": ArrayRecord({"w": Array(w), "steps": Array(sent["steps"])}),
                              "metrics": MetricRecord({"num-examples": 10}),
                              "meta": ConfigRecord({"payload": payload})})
        return Message(content, reply_to=m)

    reply = malicious_mod(msg, ctx, honest)
    out = to_numpy_dict(reply.content["arrays"])
    out["_kind"] = reply.content["meta"].get("malicious", "")
    return out


@pytest.mark.parametrize("payload", ["weights", "gradient"])
def test_model_level_kinds_send_what_they_promise(payload):
    bad, good = min(BAD), min(set(range(N)) - BAD)
    sent_update = lambda out: out["w"] - (0 if payload == "gradient" else SENT["w"])  # noqa: E731
    flip = run_mod("sign-flip", bad, payload=payload)
    np.testing.assert_allclose(sent_update(flip), -4.0 * UPDATE, rtol=1e-4, atol=1e-6)
    assert flip["_kind"] == "sign-flip" and np.array_equal(flip["steps"], SENT["steps"])
    np.testing.assert_allclose(sent_update(run_mod("scale", bad, payload=payload)), 4.0 * UPDATE, rtol=1e-4,
                               atol=1e-6)
    noise = sent_update(run_mod("noise", bad, payload=payload))
    rms = float(np.sqrt(np.mean(UPDATE.astype(np.float64) ** 2)))
    assert 0.95 * 4 * rms < float(np.sqrt(np.mean(noise.astype(np.float64) ** 2))) < 1.05 * 4 * rms
    cos = float((noise * UPDATE).sum() / np.linalg.norm(noise) / np.linalg.norm(UPDATE))
    assert abs(cos) < 0.05  # noise, not the update
    np.testing.assert_array_equal(noise, sent_update(run_mod("noise", bad, payload=payload)))  # seeded
    assert not np.array_equal(noise, sent_update(run_mod("noise", bad, payload=payload, rnd=2)))
    honest = run_mod("sign-flip", good, payload=payload)
    np.testing.assert_allclose(sent_update(honest), UPDATE, atol=1e-6)
    assert honest["_kind"] == ""


def cfg_of(**over) -> RunConfig:
    return RunConfig(**{**dict(num_clients=N, model="cnn", partition="iid", seed=SEED, malicious_share=SHARE), **over})


def test_label_flip_relabels_exactly_the_malicious_clients_samples():
    cfg = cfg_of(malicious_kind="label-flip")
    train = dataset(cfg, "train")
    held = as_held(cfg, train)
    parts = run_partition(cfg, train.labels)
    for pid, idx in enumerate(parts):
        want = train.num_classes - 1 - train.labels[idx] if pid in BAD else train.labels[idx]
        np.testing.assert_array_equal(held.labels[idx], want)
    assert held.images is train.images
    assert as_held(cfg_of(malicious_kind="sign-flip"), train) is train  # model-level kinds leave the data


def test_backdoor_kind_poisons_the_malicious_clients():
    cfg = cfg_of(malicious_kind="backdoor", backdoor_target=3)
    assert backdoor_clients(cfg) == BAD
    train = dataset(cfg, "train")
    held = as_held(cfg, train)
    parts = run_partition(cfg, train.labels)
    changed = np.flatnonzero(held.labels != train.labels)
    owners = {pid for pid, idx in enumerate(parts) if np.intersect1d(idx, changed).size}
    assert owners == set(BAD) and (held.labels[changed] == 3).all()


@pytest.mark.parametrize("over, words", [
    (dict(model="ddpm-tiny", malicious_kind="backdoor"), "backdoor is for classifiers"),
    (dict(model="ddpm-tiny", malicious_kind="label-flip"), "label-flip needs labels"),
    (dict(malicious_share=1.0), "malicious-share must be in [0, 1)"),
])
def test_kinds_the_model_cannot_take_are_refused(over, words):
    with pytest.raises(ConfigError) as err:
        cfg_of(**over)
    assert words in str(err.value)


class Grid:
    def __init__(self, clients):
        self.clients = clients

    def get_node_ids(self):
        return list(self.clients)


def test_server_marks_the_malicious_in_metrics_and_ledger(tmp_path):
    cfg = cfg_of(clients_per_round=10, out_dir=str(tmp_path))
    clients = {100 + p: ClientInfo(100 + p, p, 10, np.zeros(10, np.int64)) for p in range(N)}
    log = RoundLog()
    strategy = build_strategy(cfg, clients, log)
    msgs = list(strategy.configure_train(1, ArrayRecord({"w": Array(np.zeros(3, np.float32))}), ConfigRecord({}),
                                         Grid(clients)))
    pids = [clients[m.metadata.dst_node_id].partition_id for m in msgs]
    replies = [Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(3, np.float32))}),
                                   "metrics": MetricRecord({"num-examples": 10, "train-loss": 1.0})}), reply_to=m)
               for m in msgs if clients[m.metadata.dst_node_id].partition_id % 2 == 0]  # odd ones fail to reply
    strategy.aggregate_train(1, replies)
    row = log.get(1)
    assert row["malicious_sampled"] == len(set(pids) & BAD)
    assert row["malicious_aggregated"] == len({p for p in pids if p % 2 == 0} & BAD)
    assert {"malicious_sampled", "malicious_aggregated"} <= set(strategy.metric_columns)
    doc = json.loads((tmp_path / "ledger" / "ledger.json").read_text())
    assert doc["malicious"] == {"kind": "sign-flip", "partitions": sorted(BAD)}
