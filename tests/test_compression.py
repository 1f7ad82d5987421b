"""Update compression end to end in one process: strategies/compression/compressed.py (server
wrapper), fedsim/app/compression_mod.py (client mod) and dynamic sampling.

A fake ``train`` stands behind the real mod: it adds a known, client- and
round-specific step to the weights it was sent, so every number the server sees
can be checked against the codec applied by hand.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

from fedsim.app.compression_mod import compression_mod
from fedsim.compression.codecs import decode_update, encode_update, make_codec
from fedsim.compression.codecs import codec_settings
from fedsim.config import ConfigError, RunConfig
from fedsim.records.observations import list_observations, load
from fedsim.records.round_log import RoundLog
from fedsim.records.wire import to_numpy_dict
from strategies import build_strategy
from strategies.client_registry import ClientInfo
from strategies.compression.compressed import COMPRESSED, Compressed
from strategies.compression.schedule import Schedule

pytestmark = pytest.mark.usefixtures('task_identity')

N = 4
CLIENTS = {100 + p: ClientInfo(100 + p, p, 10, np.zeros(2, np.int64)) for p in range(N)}
SHAPES = {"conv.weight": (6, 1, 3, 3), "conv.bias": (6,), "fc.weight": (10, 24)}
W0 = {k: np.random.default_rng(1).normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


class FakeGrid:
    def get_node_ids(self):
        return list(CLIENTS)


def step(pid: int, rnd: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 * rnd + pid)
    return {k: (0.1 * rng.standard_t(3, size=s)).astype(np.float32) for k, s in SHAPES.items()}


def fake_train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    rnd = int(msg.content["config"]["server-round"])
    sent = to_numpy_dict(msg.content["arrays"])
    local = {k: sent[k] + v for k, v in step(pid, rnd).items()}
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in local.items()}),
                          "metrics": MetricRecord({"num-examples": 10, "train-loss": 0.0}),
                          "meta": ConfigRecord({"partition-id": pid, "payload": "weights"})})
    return Message(content, reply_to=msg)


def federation(tmp_path, rounds: int, **overrides):
    """Run ``rounds`` rounds; returns (server view per round, client contexts, log, strategy, messages)."""
    cfg = RunConfig(num_clients=N, clients_per_round=overrides.pop("clients_per_round", N), model="cnn",
                    out_dir=str(tmp_path), **overrides)
    log = RoundLog()
    strategy = build_strategy(cfg, CLIENTS, log)
    contexts = {n: Context(run_id=1, node_id=n, node_config={"partition-id": c.partition_id},
                           state=RecordDict(), run_config=cfg.to_flwr()) for n, c in CLIENTS.items()}
    arrays = ArrayRecord({k: Array(v) for k, v in W0.items()})
    views, sent_log = [to_numpy_dict(arrays)], []
    for rnd in range(1, rounds + 1):
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord({}), FakeGrid()))
        sent_log.append([m.content for m in messages])  # the mod swaps a message's content
        replies = [compression_mod(m, contexts[m.metadata.dst_node_id], fake_train) for m in messages]
        new, _ = strategy.aggregate_train(rnd, replies)
        arrays = new if new is not None else arrays
        views.append(to_numpy_dict(arrays))
    return views, contexts, log, strategy, sent_log


def test_server_aggregates_what_the_codec_sent_and_error_feedback_keeps_the_rest(tmp_path):
    views, contexts, log, _, _ = federation(tmp_path, 3, compression="dhq", keep_ratio=0.1, dhq_levels=4)
    codec = make_codec("dhq", keep_ratio=0.1, levels=4)
    residual = {p: {} for p in range(N)}
    expect = dict(W0)
    for rnd in (1, 2, 3):
        sent = [encode_update(codec, step(p, rnd), residual=residual[p])[1] for p in range(N)]
        expect = {k: expect[k] + np.mean([s[k] for s in sent], axis=0, dtype=np.float64).astype(np.float32)
                  for k in SHAPES}
        for k in SHAPES:
            np.testing.assert_allclose(views[rnd][k], expect[k], atol=1e-6)
    # each client's residual lives in its context: sent + residual = sum of raw steps
    for n, ctx in contexts.items():
        p = CLIENTS[n].partition_id
        kept = to_numpy_dict(ctx.state["compression-residual"])
        for k in SHAPES:
            np.testing.assert_allclose(kept[k], residual[p][k], atol=1e-6)
    row = log.get(3)
    assert row["compression_ratio"] > 3 and row["bytes_up"] < row["bytes_down"] / 3
    assert row["bytes_up_total"] == sum(log.get(r)["bytes_up"] for r in (1, 2, 3))


def test_uplink_bytes_are_the_serialized_compressed_replies(tmp_path):
    cfg = RunConfig(num_clients=N, clients_per_round=N, compression="stc", keep_ratio=0.05, model="cnn")
    log = RoundLog()
    strategy = build_strategy(cfg, CLIENTS, log)
    ctx = {n: Context(1, n, {"partition-id": c.partition_id}, RecordDict(), cfg.to_flwr()) for n, c in CLIENTS.items()}
    arrays = ArrayRecord({k: Array(v) for k, v in W0.items()})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), FakeGrid()))
    replies = [compression_mod(m, ctx[m.metadata.dst_node_id], fake_train) for m in messages]
    assert all(list(r.content.array_records) == [COMPRESSED] for r in replies)
    wire = sum(recorddict_to_proto(r.content).ByteSize() for r in replies)
    strategy.aggregate_train(1, replies)
    assert log.get(1)["bytes_up"] == wire
    assert messages[0].content["config"]["compression"] == "stc"


def test_qsgd_is_seeded_per_client_and_round(tmp_path):
    a = federation(tmp_path / "a", 2, compression="qsgd", qsgd_levels=4)[0]
    b = federation(tmp_path / "b", 2, compression="qsgd", qsgd_levels=4)[0]
    c = federation(tmp_path / "c", 2, compression="qsgd", qsgd_levels=4, seed=1)[0]
    assert all(np.array_equal(a[2][k], b[2][k]) for k in SHAPES)
    assert not all(np.array_equal(a[2][k], c[2][k]) for k in SHAPES)


def test_downlink_clients_rebuild_exactly_the_servers_model(tmp_path):
    """Two of four clients per round, so clients miss rounds and get several codes at once."""
    views, contexts, log, strategy, sent = federation(tmp_path, 6, compression="dhq", keep_ratio=0.2,
                                                      compress_downlink=True, clients_per_round=2)
    codes_sent = [c for contents in sent for c in contents if "downlink" in c.array_records]
    assert codes_sent, "no client was ever sent codes"
    assert any(len(c["downlink"].keys()) > 1 for c in codes_sent), "no client caught up several rounds"
    for ctx in contexts.values():
        if "compression-view" not in ctx.state.array_records:
            continue
        held = int(ctx.state["compression-view-round"]["round"])
        mine = to_numpy_dict(ctx.state["compression-view"])
        for k in SHAPES:
            np.testing.assert_array_equal(mine[k], views[held][k])
    dense = log.get(1)["bytes_down"]
    assert log.get(6)["bytes_down"] < dense / 2


def test_downlink_client_out_of_sync_fails_cleanly_and_gets_the_dense_model_next(tmp_path):
    cfg = RunConfig(num_clients=N, clients_per_round=N, compression="stc", keep_ratio=0.2,
                    compress_downlink=True, model="cnn")
    log = RoundLog()
    strategy = build_strategy(cfg, CLIENTS, log)
    ctx = {n: Context(1, n, {"partition-id": c.partition_id}, RecordDict(), cfg.to_flwr()) for n, c in CLIENTS.items()}
    arrays = ArrayRecord({k: Array(v) for k, v in W0.items()})
    for rnd in (1, 2):
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord({}), FakeGrid()))
        if rnd == 2:
            ctx[100].state = RecordDict()  # node 100 lost its copy (restarted)
        replies = []
        for m in messages:
            try:
                replies.append(compression_mod(m, ctx[m.metadata.dst_node_id], fake_train))
            except RuntimeError as err:
                assert "holds round None" in str(err)
                from flwr.app import Error
                replies.append(Message(Error(code=0, reason=str(err)), reply_to=m))
        arrays, _ = strategy.aggregate_train(rnd, replies)
    assert log.get(2)["clients_failed"] == 1
    messages = list(strategy.configure_train(3, arrays, ConfigRecord({}), FakeGrid()))
    to_100 = next(m for m in messages if m.metadata.dst_node_id == 100)
    assert "arrays" in to_100.content.array_records  # dense again


def test_recording_stores_the_bytes_and_their_decoding(tmp_path):
    federation(tmp_path, 1, compression="dhq", keep_ratio=0.1, record_clients="1")
    [path] = list_observations(tmp_path)
    obs = load(path)
    assert obs.codec == "dhq(p=0.1,L=4)" and obs.encoded is not None
    codec = make_codec("dhq", keep_ratio=0.1, levels=4)
    decoded = decode_update(codec, obs.encoded, {k: (s, np.float32) for k, s in SHAPES.items()})
    for k in SHAPES:
        np.testing.assert_allclose(obs.update()[k].numpy(), decoded[k], atol=1e-6)
        assert np.count_nonzero(decoded[k]) <= np.ceil(0.1 * np.prod(SHAPES[k]))


def test_reply_with_the_wrong_codec_is_rejected_not_fatal(tmp_path):
    cfg = RunConfig(num_clients=N, clients_per_round=N, compression="dhq", model="cnn")
    log = RoundLog()
    strategy = build_strategy(cfg, CLIENTS, log)
    arrays = ArrayRecord({k: Array(v) for k, v in W0.items()})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), FakeGrid()))
    ctx = {n: Context(1, n, {"partition-id": c.partition_id}, RecordDict(), cfg.to_flwr()) for n, c in CLIENTS.items()}
    replies = [compression_mod(m, ctx[m.metadata.dst_node_id], fake_train) for m in messages]
    bad, _ = encode_update(make_codec("stc"), step(0, 1))
    replies[0].content[COMPRESSED] = ArrayRecord({"update": Array(np.frombuffer(bad, np.uint8).copy())})
    new, _ = strategy.aggregate_train(1, replies)
    assert new is not None and log.get(1)["clients_rejected"] == 1


def test_uncompressed_runs_do_not_touch_messages(tmp_path):
    cfg = RunConfig(num_clients=N, clients_per_round=N, model="cnn")
    strategy = build_strategy(cfg, CLIENTS, RoundLog())
    assert not isinstance(strategy.inner, Compressed)
    messages = list(strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in W0.items()}),
                                             ConfigRecord({}), FakeGrid()))
    assert "compression" not in messages[0].content["config"]
    ctx = Context(1, 100, {"partition-id": 0}, RecordDict(), cfg.to_flwr())
    reply = compression_mod(messages[0], ctx, fake_train)
    assert list(reply.content.array_records) == ["arrays"]


def test_exponential_schedule_decays_to_its_floor():
    s = Schedule("exponential", clients=50, decay=0.1, minimum=5)
    ks = [s(t) for t in range(1, 60)]
    assert ks[0] == 50 and ks[1] == 46 and ks[-1] == 5 and ks == sorted(ks, reverse=True)
    assert [Schedule("linear", 10, 0.25, 2)(t) for t in (1, 2, 3, 4, 5)] == [10, 8, 5, 3, 2]
    assert Schedule("constant", 7)(100) == 7


def test_dynamic_sampling_in_the_strategy(tmp_path):
    _, _, log, _, sent = federation(tmp_path, 4, sampling="exponential", sampling_decay=0.5, sampling_min=1,
                                    compression="topk", keep_ratio=0.5)
    assert [len(m) for m in sent] == [4, 3, 2, 1]
    assert [log.get(r)["clients_sampled"] for r in (1, 2, 3, 4)] == [4, 3, 2, 1]


@pytest.mark.parametrize("overrides, message", [
    ({"compression": "dhq", "keep_ratio": 1.5}, "keep-ratio"),
    ({"compression": "dhq", "dhq_levels": 6, "dhq_split": "tree"}, "2\\^depth"),
    ({"compress_downlink": True}, "compress-downlink needs a codec"),
    ({"sampling_min": 0}, "sampling-min"),
])
def test_bad_compression_config_is_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**overrides)


def test_codec_settings_travel_as_config():
    settings = codec_settings(RunConfig(compression="qsgd", qsgd_levels=8).to_flwr())
    assert settings["compression"] == "qsgd" and settings["qsgd-levels"] == 8
    ConfigRecord(settings)  # every value is a Flower config value


@pytest.mark.slow
def test_residual_survives_rounds_in_a_real_simulation(tmp_path):
    """Through Flower's simulation engine: client 0's round-2 upload must be the code of
    (its round-2 update + the residual its round-1 upload left), so the residual lived
    in the node's context between rounds. The updates are recomputed in-process
    (training is seeded), from the recorded global weights."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from flwr.app import MessageType

    from fedsim.app import client_app
    from fedsim.config import resolve
    from fedsim.records.wire import to_array_record

    out = tmp_path / "run"
    settings = ["model='cnn'", "dataset='digits'", "num-clients=4", "clients-per-round=4", "rounds=2",
                "partition='iid'", "local-epochs=1", "eval-every=0", "compression='dhq'", "keep-ratio=0.1",
                "record-clients='0'"]
    cmd = [str(Path(sys.executable).parent / "fedsim"), "run", "--out", str(out)]
    for item in settings:
        cmd += ["--set", item]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert res.returncode == 0, res.stderr[-2000:]
    df = pd.read_csv(out / "metrics.csv")
    assert (df["compression_ratio"] > 5).all() and (df["bytes_up"] * 5 < df["bytes_down"]).all()
    cfg = resolve(out / "config.toml", [])
    codec = make_codec("dhq", keep_ratio=0.1, levels=4)
    obs = [load(p) for p in list_observations(out)]
    assert [o.server_round for o in obs] == [1, 2] and all(o.encoded for o in obs)
    ctx = Context(1, 100, {"partition-id": 0, "num-partitions": 4}, RecordDict(), cfg.to_flwr())
    residual, updates, sent = {}, [], []
    for o in obs:
        msg = Message(RecordDict({"arrays": to_array_record(o.sent),
                                  "config": ConfigRecord({"server-round": o.server_round})}),
                      dst_node_id=100, message_type=MessageType.TRAIN)
        local = to_numpy_dict(client_app.train(msg, ctx).content["arrays"])
        updates.append({k: local[k] - o.sent[k].numpy() for k in o.sent})
        sent.append(encode_update(codec, updates[-1], residual=residual)[1])
    layout = {k: (tuple(v.shape), np.float32) for k, v in obs[1].sent.items()}
    got = decode_update(codec, obs[1].encoded, layout)
    without = encode_update(codec, updates[1])[1]  # had the client forgotten its residual
    close = sum(float(np.abs(got[k] - sent[1][k]).sum()) for k in got)
    far = sum(float(np.abs(got[k] - without[k]).sum()) for k in got)
    assert close < 0.05 * far, (close, far)
