"""Flower's aggregation rules under fedsim's layer: strategies/rules.py and strategies/ruled.py.

Each rule's aggregate through fedsim (selection, validation, partition-id order, the streamed
mean, dtype cast) is compared with Flower's own class given the same replies; then every rule
runs rounds through the whole stack with FedEMD selection and DHQ compression on. FedProx's
proximal term is checked against a hand computation.
"""

from __future__ import annotations

import copy
import pickle
import re

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from torch import nn

from fedsim.app.compression_mod import compression_mod
from fedsim.compression.codecs import encode_update, make_codec
from fedsim.config import ConfigError, RunConfig, load_config
from fedsim.models.train import ClassifierTask, train_local
from fedsim.records.checkpoint import load_state, state_of
from fedsim.records.round_log import RoundLog
from fedsim.records.wire import to_numpy_dict
from strategies import STRATEGIES, build_strategy
from strategies.client_registry import ClientInfo
from strategies.ruled import Ruled
from strategies.rules import RULES, build_rule, check_rule, server_lr

pytestmark = pytest.mark.usefixtures("task_identity")

N = 8
SHAPES = {"conv.weight": (4, 1, 3, 3), "conv.bias": (4,), "fc.weight": (3, 8)}
W0 = {k: np.random.default_rng(1).normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
CLIENTS = {100 + 3 * p: ClientInfo(100 + 3 * p, p, 10 + 5 * p, np.bincount([p % 3, (p + 1) % 3], minlength=3))
           for p in range(N)}  # node ids unlike partition ids, distinct sizes and label histograms


class FakeGrid:
    def get_node_ids(self):
        return list(CLIENTS)


def record(d: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in d.items()})


def step(pid: int, rnd: int) -> dict[str, np.ndarray]:
    """Client pid's change in round rnd; client 0 is an outlier (what robust rules are for)."""
    rng = np.random.default_rng(1000 * rnd + pid)
    scale = 5.0 if pid == 0 else 0.1
    return {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}


def reply_to(msg: Message, arrays: dict[str, np.ndarray], pid: int, rnd: int) -> Message:
    metrics = MetricRecord({"num-examples": CLIENTS[msg.metadata.dst_node_id].num_examples,
                            "train-loss": 0.5 + 0.1 * pid + 0.01 * rnd})
    content = RecordDict({"arrays": record(arrays), "metrics": metrics,
                          "meta": ConfigRecord({"partition-id": pid, "payload": "weights"})})
    return Message(content, reply_to=msg)


def cfg_of(name: str, **over) -> RunConfig:
    base = dict(num_clients=N, clients_per_round=7, model="cnn", strategy=name, num_malicious=1)
    return RunConfig(**{**base, **over})


def flower_reference(name: str, cfg: RunConfig, rounds: list[list[tuple[int, dict]]], w0: dict) -> list[dict]:
    """Flower's rule alone: each round configured on the nodes that replied, then given the replies."""
    _, rule = build_rule(cfg)
    w, out = record(w0), []
    for rnd, replies in enumerate(rounds, start=1):
        nodes = [node for node, _ in replies]
        msgs = {m.metadata.dst_node_id: m for m in rule.configure_train(rnd, w, ConfigRecord({}), _Offer(nodes))}
        got, _ = rule.aggregate_train(rnd, [reply_to(msgs[n], a, CLIENTS[n].partition_id, rnd) for n, a in replies])
        w = record({k: np.asarray(v.numpy(), np.float32) for k, v in got.items()})
        out.append(to_numpy_dict(w))
    return out


class _Offer:
    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return self.nodes


@pytest.mark.parametrize("name", list(RULES))
def test_rule_under_fedsim_aggregates_as_flower_does(name):
    """Two rounds, replies arriving out of partition order: fedsim's layer gives what Flower's
    own class gives on the same replies (to float rounding: fedsim folds means in float64)."""
    cfg = cfg_of(name)
    kind, rule = build_rule(cfg)
    strategy = Ruled(CLIENTS, 7, seed=cfg.seed, log_book=RoundLog(), rule=rule, kind=kind, server_lr=server_lr(cfg))
    w, seen = record(W0), []
    for rnd in (1, 2):
        msgs = list(strategy.configure_train(rnd, w, ConfigRecord({}), FakeGrid()))
        pids = [CLIENTS[m.metadata.dst_node_id].partition_id for m in msgs]
        assert pids == sorted(pids) and len(pids) == 7  # fedsim's selection, in partition order
        if name == "fedprox":
            assert all(m.content["config"]["proximal-mu"] == cfg.proximal_mu for m in msgs)
        current = to_numpy_dict(w)
        replies = [(m.metadata.dst_node_id, {k: current[k] + v for k, v in step(p, rnd).items()})
                   for m, p in zip(msgs, pids)]
        arrivals = [reply_to(m, a, p, rnd) for m, p, (_, a) in zip(msgs, pids, replies)][::-1]
        new, metrics = strategy.aggregate_train(rnd, arrivals)
        assert all(new[k].numpy().dtype == np.float32 for k in SHAPES)
        assert all(len(m.content["arrays"]) == len(SHAPES) for m in arrivals)  # the rule read copies
        assert "train-loss" in metrics
        w = new
        seen.append((to_numpy_dict(new), replies))
    expect = flower_reference(name, cfg, [r for _, r in seen], W0)
    for (got, _), want in zip(seen, expect):
        for k in SHAPES:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5)
    plain = np.mean([a["fc.weight"] for _, a in seen[0][1]], axis=0)
    if RULES[name].kind != "mean":  # each rule does something other than the mean (the test can fail)
        assert not np.allclose(seen[0][0]["fc.weight"], plain, atol=1e-4)


def federation(cfg: RunConfig, rounds: int):
    """``rounds`` rounds of build_strategy(cfg) with the real compression mod before a fake trainer."""
    log = RoundLog()
    strategy = build_strategy(cfg, CLIENTS, log)
    contexts = {n: Context(run_id=1, node_id=n, node_config={"partition-id": c.partition_id},
                           state=RecordDict(), run_config=cfg.to_flwr()) for n, c in CLIENTS.items()}

    def fake_train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        rnd = int(msg.content["config"]["server-round"])
        sent = to_numpy_dict(msg.content["arrays"])
        return reply_to(msg, {k: sent[k] + v for k, v in step(pid, rnd).items()}, pid, rnd)

    w, views = record(W0), []
    for rnd in range(1, rounds + 1):
        msgs = list(strategy.configure_train(rnd, w, ConfigRecord({}), FakeGrid()))
        replies = [compression_mod(m, contexts[m.metadata.dst_node_id], fake_train) for m in msgs]
        new, _ = strategy.aggregate_train(rnd, replies)
        views.append(([m.metadata.dst_node_id for m in msgs], to_numpy_dict(w), to_numpy_dict(new)))
        w = new
    return views, log


@pytest.mark.parametrize("name", list(RULES))
def test_rule_through_the_stack_with_fedemd_selection_and_dhq_compression(name):
    """build_strategy with FedEMD and DHQ (error feedback in the client contexts): round 1's global
    model is Flower's rule applied to the weights the codec let through, from FedEMD's clients."""
    cfg = cfg_of(name, selector="fedemd", compression="dhq", keep_ratio=0.2, dhq_levels=4)
    views, log = federation(cfg, 2)
    (nodes, w_before, w_after), _ = views
    codec = make_codec("dhq", keep_ratio=0.2, levels=4)
    decoded = [(n, {k: w_before[k] + v for k, v in
                    encode_update(codec, step(CLIENTS[n].partition_id, 1), residual={})[1].items()})
               for n in sorted(nodes, key=lambda n: CLIENTS[n].partition_id)]
    want = flower_reference(name, cfg, [decoded], W0)[0]
    for k in SHAPES:
        np.testing.assert_allclose(w_after[k], want[k], rtol=1e-5, atol=1e-5)
    assert log.get(1)["compression_ratio"] > 2 and log.get(2)["clients_rejected"] == 0


def test_optimizer_state_outlives_a_checkpoint():
    """FedAdam's moments are checkpointed with the run: a strategy restored from round 1's state
    gives round 2 exactly as the one that went on."""
    cfg = cfg_of("fedadam")

    def make():
        kind, rule = build_rule(cfg)
        return Ruled(CLIENTS, 7, seed=0, log_book=RoundLog(), rule=rule, kind=kind, server_lr=server_lr(cfg))

    def one_round(strategy, rnd, w):
        msgs = list(strategy.configure_train(rnd, w, ConfigRecord({}), FakeGrid()))
        cur = to_numpy_dict(w)
        new, _ = strategy.aggregate_train(rnd, [reply_to(m, {k: cur[k] + v for k, v in step(
            CLIENTS[m.metadata.dst_node_id].partition_id, rnd).items()}, CLIENTS[m.metadata.dst_node_id].partition_id,
            rnd) for m in msgs])
        return new

    a = make()
    w1 = one_round(a, 1, record(W0))
    saved = pickle.loads(pickle.dumps(state_of(a)))
    assert saved["rule"].m_t is not None  # the moments are in it
    b = make()
    load_state(b, saved)
    w2a, w2b = one_round(a, 2, w1), one_round(b, 2, w1)
    fresh = one_round(make(), 2, w1)  # without the moments: a different step
    for k in SHAPES:
        np.testing.assert_array_equal(w2a[k].numpy(), w2b[k].numpy())
    assert not all(np.allclose(w2a[k].numpy(), fresh[k].numpy()) for k in SHAPES)


def test_fedsgd_under_a_server_optimizer_steps_on_the_mean_gradient():
    """FedSGD + FedAvgM with momentum 0: w - server-lr * mean gradient, as FedSGD under fedavg."""
    cfg = cfg_of("fedavgm", mode="fedsgd", server_momentum=0.0, server_lr=0.5)
    kind, rule = build_rule(cfg)
    s = Ruled(CLIENTS, 7, seed=0, log_book=RoundLog(), rule=rule, kind=kind, mode="fedsgd", server_lr=server_lr(cfg))
    msgs = list(s.configure_train(1, record(W0), ConfigRecord({}), FakeGrid()))
    grads = {m.metadata.dst_node_id: step(CLIENTS[m.metadata.dst_node_id].partition_id, 1) for m in msgs}
    new, _ = s.aggregate_train(1, [reply_to(m, grads[m.metadata.dst_node_id],
                                            CLIENTS[m.metadata.dst_node_id].partition_id, 1) for m in msgs])
    weights = np.array([CLIENTS[n].num_examples for n in grads], np.float64)
    for k in SHAPES:
        mean = sum(w * g[k].astype(np.float64) for w, g in zip(weights, grads.values())) / weights.sum()
        np.testing.assert_allclose(new[k].numpy(), W0[k] - 0.5 * mean, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("over, words", [
    (dict(strategy="krum", clients_per_round=4, num_malicious=1), "krum needs clients per round > 2 num-malicious + 2"),
    (dict(strategy="bulyan", clients_per_round=6, num_malicious=1), "bulyan needs clients per round >= 4"),
    (dict(strategy="fedprox", mode="fedsgd"), "needs local training"),
    (dict(strategy="qfedavg", mode="fedsgd"), "needs local training"),
    (dict(strategy="krum", unlearn_method="fine-tune", forget_clients="1"), "unlearning rounds need the weighted mean"),
])
def test_a_rule_the_config_cannot_serve_is_refused_in_one_line(over, words):
    with pytest.raises(ConfigError, match=re.escape(words)) as err:
        check_rule(RunConfig(**{**dict(num_clients=N, clients_per_round=7, model="cnn"), **over}))
    assert "\n" not in str(err.value)


def test_bad_rule_values_are_config_errors():
    for over in ({"trim-beta": 0.5}, {"beta-1": 1.0}, {"tau": 0.0}, {"num-malicious": -1}, {"strategy": "fedsum"}):
        with pytest.raises(ConfigError, match=next(iter(over))):
            load_config(over)
    assert set(STRATEGIES) == {"fedavg", "scaffold", *RULES}


def test_fedprox_local_objective_by_hand():
    """train_local with proximal_mu: two full-batch SGD steps on CE + mu/2 ||w - w0||^2, computed
    here with autograd on the explicit objective. (The first step's proximal gradient is zero;
    the second's is not, so dropping the term fails the test.)"""
    torch.manual_seed(0)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0])
    net = nn.Linear(3, 2)
    w0 = [p.detach().clone() for p in net.parameters()]
    mu, lr = 2.0, 0.3
    ref = copy.deepcopy(net)
    for _ in range(2):
        obj = nn.functional.cross_entropy(ref(x), y) + mu / 2 * sum(((p - a) ** 2).sum()
                                                                   for p, a in zip(ref.parameters(), w0))
        grads = torch.autograd.grad(obj, list(ref.parameters()))
        with torch.no_grad():
            for p, g in zip(ref.parameters(), grads):
                p -= lr * g
    g = torch.Generator().manual_seed(0)
    train_local(net, ClassifierTask(), x, y, epochs=2, batch_size=6, lr=lr, optimizer="sgd", generator=g,
                proximal_mu=mu)
    plain = copy.deepcopy(ref)
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    again = nn.Linear(3, 2)
    again.load_state_dict({k: v for k, v in zip(("weight", "bias"), w0)})
    train_local(again, ClassifierTask(), x, y, epochs=2, batch_size=6, lr=lr, optimizer="sgd",
                generator=torch.Generator().manual_seed(0))
    assert not all(torch.allclose(p, q, atol=1e-4) for p, q in zip(again.parameters(), plain.parameters()))
