"""Checkpoint and resume in one process: fedsim/records/checkpoint.py, fedsim/app/run_state.py,
fedsim/app/state_mod.py, strategies/wrappers/resumed.py and client_state.py, fedsim/cli/resume.py.

The federation of test_compression.py (the real strategy stack and client mods, a fake
``train`` that adds a known step): 6 rounds straight, against 3 rounds, a checkpoint, a
*fresh* strategy and fresh node contexts under new node ids (what a restarted simulation
has), and rounds 4-6. The global models of every round must be bit-identical.
"""

from __future__ import annotations

import csv
import pickle

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedsim.app.compression_mod import compression_mod
from fedsim.app.run_state import cut_metrics, drop_client_state_after
from fedsim.app.state_mod import state_mod
from fedsim.config import ConfigError, RunConfig, write_toml
from fedsim.records.checkpoint import CheckpointError, Checkpoints, load_state, state_of
from fedsim.records.round_log import RoundLog
from fedsim.records.run_folder import RunFolder
from fedsim.records.wire import to_numpy_dict
from fedsim.unlearning.mask import pack_each
from strategies import build_strategy
from strategies.client_registry import ClientInfo
from strategies.wrappers.client_state import KeepClientState
from strategies.wrappers.resumed import Resumed

pytestmark = pytest.mark.usefixtures("task_identity")

N = 6
SHAPES = {"conv.weight": (4, 1, 3, 3), "fc.weight": (10, 12)}
W0 = {k: np.random.default_rng(1).normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
HISTS = [np.eye(3, dtype=np.int64)[p % 3] * (5 + p) + 1 for p in range(N)]  # FedEMD needs distinct histograms


HOLDERS = (1, 4)  # clients holding data an unlearning request forgets


def clients(node_base: int) -> dict[int, ClientInfo]:
    return {node_base + 7 * p: ClientInfo(node_base + 7 * p, p, int(HISTS[p].sum()), HISTS[p],
                                          num_forget=3 * (p in HOLDERS)) for p in range(N)}


class FakeGrid:
    def __init__(self, registry):
        self.registry = registry

    def get_node_ids(self):
        return list(self.registry)


def fake_train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    rnd = int(msg.content["config"]["server-round"])
    rng = np.random.default_rng(1000 * rnd + pid)
    sent = to_numpy_dict(msg.content["arrays"])
    if str(msg.content["config"].get("objective", "train")) == "saliency":  # SalUn's mask round
        mask = pack_each({k: rng.random(s) < 0.5 for k, s in SHAPES.items()})
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in mask.items()}),
                              "metrics": MetricRecord({"num-examples": 10, "train-loss": 0.0}),
                              "meta": ConfigRecord({"partition-id": pid, "payload": "mask"})})
        return Message(content, reply_to=msg)
    local = {k: sent[k] + (0.1 * rng.standard_t(3, size=s)).astype(np.float32) for k, s in SHAPES.items()}
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in local.items()}),
                          "metrics": MetricRecord({"num-examples": 10, "train-loss": float(rnd)}),
                          "meta": ConfigRecord({"partition-id": pid, "payload": "weights"})})
    return Message(content, reply_to=msg)


def client_app(msg: Message, context: Context) -> Message:
    return state_mod(msg, context, lambda m, c: compression_mod(m, c, fake_train))


class Federation:
    """A strategy stack as the ServerApp builds it, plus the clients' contexts."""

    def __init__(self, cfg: RunConfig, node_base: int) -> None:
        self.registry = clients(node_base)
        self.log = RoundLog()
        self.strategy = build_strategy(cfg, self.registry, self.log)
        self.ckpts = Checkpoints(cfg.out_dir, keep=2)
        self.outer = KeepClientState(self.strategy, cfg.out_dir + "/checkpoints/clients",
                                     lambda: (self.ckpts.rounds() or [0])[-1])
        self.contexts = {n: Context(run_id=node_base, node_id=n, node_config={"partition-id": c.partition_id},
                                    state=RecordDict(), run_config=cfg.to_flwr()) for n, c in self.registry.items()}

    def run(self, arrays: ArrayRecord, rounds: range, offset: int = 0) -> list[dict[str, np.ndarray]]:
        strategy, views = (Resumed(self.outer, offset) if offset else self.outer), []
        for rnd in rounds:  # Flower's numbering: 1, 2, ...
            messages = list(strategy.configure_train(rnd, arrays, ConfigRecord({}), FakeGrid(self.registry)))
            replies = [client_app(m, self.contexts[m.metadata.dst_node_id]) for m in messages]
            new, _ = strategy.aggregate_train(rnd, replies)
            arrays = new if new is not None else arrays
            views.append({k: v.copy() for k, v in to_numpy_dict(arrays).items()})
            self.ckpts.save(rnd + offset, {"arrays": views[-1], "strategy": state_of(self.strategy)})
        return views


def config(tmp_path, name: str, **overrides) -> RunConfig:
    (tmp_path / name).mkdir()
    return RunConfig(**{"num_clients": N, "clients_per_round": 2, "model": "cnn", "out_dir": str(tmp_path / name),
                        **overrides})


CASES = {
    "plain": dict(clients_per_round=3),
    "dhq-ef-downlink": dict(compression="dhq", keep_ratio=0.2, dhq_levels=4, compress_downlink=True,
                            clients_per_round=2),
    "fedemd": dict(selector="fedemd", clients_per_round=2, record_clients="all", partition="exclusive-1",
                   fedemd_alpha=4.0, fedemd_beta=0.5),  # strong scores: FedEMD's state decides the draws
    "salun": dict(unlearn_method="salun", forget_class=1, unlearn_rounds=4, clients_per_round=3,
                  model="ddpm-tiny", salun_mask_ratio=0.3),  # resumed inside its masked rounds (2-5)
    "exponential-sampling-ledger": dict(sampling="exponential", sampling_decay=0.3, clients_per_round=4,
                                        ledger_every=2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resumed_rounds_are_bit_identical_to_uninterrupted_ones(tmp_path, case):
    straight = Federation(config(tmp_path, "straight", **CASES[case]), node_base=100)
    w0 = ArrayRecord({k: Array(v) for k, v in W0.items()})
    expect = straight.run(w0, range(1, 7))

    cfg = config(tmp_path, "cut", **CASES[case])
    first = Federation(cfg, node_base=100)
    views = first.run(w0, range(1, 4))
    first.run(ArrayRecord({k: Array(v) for k, v in views[-1].items()}), range(1, 2), offset=3)  # round 4, then a crash
    ckpt = first.ckpts.latest()
    assert ckpt.round == 4
    ckpt = first.ckpts.load(3)  # resume from round 3 although round 4 was written: its files must not leak in
    drop_client_state_after(tmp_path / "cut" / "checkpoints" / "clients", 3)
    again = Federation(cfg, node_base=5000)  # a restarted simulation: new node ids, empty contexts
    load_state(again.strategy, ckpt.payload["strategy"])
    resumed = again.run(ArrayRecord({k: Array(v) for k, v in ckpt.payload["arrays"].items()}), range(1, 4), offset=3)
    for rnd, (want, got) in enumerate(zip(expect[3:], resumed), start=4):
        for k in SHAPES:
            assert np.array_equal(want[k], got[k]), f"round {rnd}, {k}"
    timing = {"encode_s", "decode_s"}
    for rnd in (4, 5, 6):  # who trained, bytes each way, losses: the same rows
        want = {k: v for k, v in straight.log.get(rnd).items() if k not in timing}
        assert {k: v for k, v in again.log.get(rnd).items() if k not in timing} == want, f"round {rnd}"
    assert same(state_of(again.strategy), state_of(straight.strategy))  # every layer ends in the same state
    files = sorted(p.relative_to(tmp_path / "straight") for p in (tmp_path / "straight").rglob("*")
                   if p.is_file() and "checkpoints" not in p.parts)
    assert files, "nothing written"
    for name in files:  # the ledger, recorded observations: byte for byte
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


def same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def test_a_fresh_strategy_without_the_checkpoint_diverges(tmp_path):
    """The test above can fail: without restoring the layers' state, round 4 differs."""
    cfg = config(tmp_path, "a", **CASES["dhq-ef-downlink"])
    fed = Federation(cfg, node_base=100)
    w0 = ArrayRecord({k: Array(v) for k, v in W0.items()})
    views = fed.run(w0, range(1, 5))
    fresh = Federation(config(tmp_path, "b", **CASES["dhq-ef-downlink"]), node_base=100)
    got = fresh.run(ArrayRecord({k: Array(v) for k, v in views[2].items()}), range(1, 2), offset=3)
    assert not all(np.array_equal(views[3][k], got[0][k]) for k in SHAPES)


def test_client_state_files_hold_the_context_and_are_pruned(tmp_path):
    cfg = config(tmp_path, "run", **CASES["dhq-ef-downlink"])
    fed = Federation(cfg, node_base=100)
    fed.run(ArrayRecord({k: Array(v) for k, v in W0.items()}), range(1, 9))
    root = tmp_path / "run" / "checkpoints" / "clients"
    trained = {p: [r for r in range(1, 9) if str(p) in fed.log.get(r)["selected"].split()] for p in range(N)}
    assert max(len(r) for r in trained.values()) >= 4  # some client trained often enough to need pruning
    for pid, rounds in trained.items():
        kept = sorted(int(p.stem.split("-")[1]) for p in (root / str(pid)).glob("round-*.state"))
        assert kept[-1] == rounds[-1] and set(kept) <= set(rounds)
        assert len(kept) <= 3, f"client {pid} trained in {rounds} and keeps {kept}"
        ctx = next(c for c in fed.contexts.values() if c.node_config["partition-id"] == pid)
        state = pickle.loads((root / str(pid) / f"round-{kept[-1]:06d}.state").read_bytes())
        for k in SHAPES:
            assert np.array_equal(state["arrays"]["compression-residual"][k],
                                  to_numpy_dict(ctx.state["compression-residual"])[k])


def test_corrupt_or_truncated_checkpoint_falls_back_with_one_line(tmp_path):
    ckpts = Checkpoints(tmp_path, keep=3)
    for rnd in (1, 2, 3, 4):
        ckpts.save(rnd, {"round": rnd, "w": np.full(100, rnd)})
    assert ckpts.rounds() == [4, 3, 2]  # the last 3 kept
    raw = ckpts.path(4).read_bytes()
    ckpts.path(4).write_bytes(raw[:-10])  # truncated
    body = bytearray(ckpts.path(3).read_bytes())
    body[-5] ^= 1  # one bit flipped
    ckpts.path(3).write_bytes(bytes(body))
    lines = []
    ckpt = ckpts.latest(warn=lines.append)
    assert ckpt.round == 2 and ckpt.payload["w"][0] == 2
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert "round-000004" in lines[0] and "round-000003" in lines[1]
    ckpts.path(2).unlink()
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        ckpts.latest(warn=lines.append)


def test_load_state_refuses_a_different_stack(tmp_path):
    a = build_strategy(config(tmp_path, "a", selector="fedemd"), clients(100), RoundLog())
    b = build_strategy(config(tmp_path, "b", compression="dhq", keep_ratio=0.2), clients(100), RoundLog())
    with pytest.raises(CheckpointError, match="strategy changed"):
        load_state(b, state_of(a))


def test_metrics_cut_back_to_the_checkpoint(tmp_path):
    folder = RunFolder(tmp_path)
    folder.start_metrics(["x"])
    for rnd in (1, 2, 3, 4):
        folder.append_row({"round": rnd, "x": rnd * 1.5})
    cut_metrics(folder.metrics_path, 2)
    with folder.metrics_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["round"] for r in rows] == ["1", "2"] and rows[1]["x"] == "3"
    folder.continue_metrics(["x"])
    with pytest.raises(ValueError, match="columns"):
        folder.continue_metrics(["y"])


def _finished_run(tmp_path, **overrides):
    cfg = RunConfig(rounds=4, out_dir=str(tmp_path), **overrides)
    write_toml(cfg, tmp_path / "config.toml")
    Checkpoints(tmp_path).save(2, {"round": 2})
    return cfg


def test_resume_refuses_changed_keys_and_names_them(tmp_path):
    from fedsim.cli.resume import resume_config

    _finished_run(tmp_path)
    with pytest.raises(ConfigError, match=r"^--resume: lr, seed differ"):
        resume_config(tmp_path, ["lr=0.5", "seed=9", "rounds=8"])
    with pytest.raises(ConfigError, match="only grow"):
        resume_config(tmp_path, ["rounds=3"])
    cfg, left = resume_config(tmp_path, ["rounds=8", "checkpoint-keep=5"])
    assert left and cfg.resume and cfg.rounds == 8


def test_resume_of_a_finished_run_has_nothing_left(tmp_path):
    from fedsim.cli.resume import resume_config

    _finished_run(tmp_path)
    RunFolder(tmp_path).status("done", round=4, rounds=4)
    assert resume_config(tmp_path, [])[1] is False
    assert resume_config(tmp_path, ["rounds=6"])[1] is True


def test_resume_without_checkpoint_is_one_line(tmp_path):
    from fedsim.cli.resume import resume_config

    with pytest.raises(ConfigError, match="no run there"):
        resume_config(tmp_path, [])
    write_toml(RunConfig(out_dir=str(tmp_path)), tmp_path / "config.toml")
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        resume_config(tmp_path, [])


def test_resume_reports_a_corrupt_checkpoint_before_starting(tmp_path):
    from fedsim.cli.resume import resume_config

    _finished_run(tmp_path)
    Checkpoints(tmp_path).save(3, {"round": 3})
    path = Checkpoints(tmp_path).path(3)
    path.write_bytes(path.read_bytes()[:-4])
    lines = []
    assert resume_config(tmp_path, [], warn=lines.append)[1]
    assert len(lines) == 1 and "round-000003" in lines[0]
    Checkpoints(tmp_path).path(2).write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="no usable checkpoint"):
        resume_config(tmp_path, [], warn=lines.append)
