"""SCAFFOLD: the client's corrected steps and control variates (fedsim/models/scaffold.py,
fedsim/app/scaffold_client.py) and the server's (strategies/scaffold.py), against hand
computations on a quadratic, f_i(w) = mean_j 1/2 ||w - a_ij||^2, whose gradient is w - mean(a_i)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from torch import nn

from fedsim.app import client_app
from fedsim.config import RunConfig
from fedsim.models import scaffold
from fedsim.models.train import train_local
from fedsim.records.checkpoint import state_of
from fedsim.records.round_log import RoundLog
from fedsim.records.wire import to_numpy_dict
from strategies import build_strategy
from strategies.client_registry import ClientInfo
from strategies.scaffold import Scaffold
from strategies.wrappers.metered import wire_bytes
from client_messages import context, instruction

pytestmark = pytest.mark.usefixtures("task_identity")


class Point(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float32))


class Quadratic:
    def loss(self, model, x, y, *, generator=None, **_):
        return 0.5 * ((model.w - x) ** 2).sum(1)


def test_corrected_local_steps_and_option_ii_by_hand():
    """K full-batch SGD steps of w - mean(a) + c - c_i; then c_i+ = c_i - c + (x - y) / (K lr)."""
    a = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    x0, c, c_i, lr, k = [0.5, 0.5], torch.tensor([0.2, -0.1]), torch.tensor([-0.3, 0.4]), 0.1, 3
    model = Point(x0)
    corr = scaffold.correction({"w": c}, {"w": c_i})
    stats = train_local(model, Quadratic(), a, torch.zeros(2, dtype=torch.long), epochs=k, batch_size=2, lr=lr,
                        optimizer="sgd", generator=torch.Generator().manual_seed(0), correction=corr)
    w = np.array(x0, np.float64)
    for _ in range(k):
        w = w - lr * (w - a.numpy().mean(0) + (c - c_i).numpy())
    np.testing.assert_allclose(model.w.detach().numpy(), w, rtol=1e-6)
    assert stats.steps == k
    new = scaffold.variate_ii({"w": c_i}, {"w": c}, {"w": torch.tensor(x0)}, {"w": model.w.detach()}, k, lr)
    np.testing.assert_allclose(new["w"].numpy(), (c_i - c).numpy() + (np.array(x0) - w) / (k * lr), rtol=1e-5)


def test_option_i_is_the_full_local_gradient_at_x():
    a = torch.tensor([[1.0, -2.0], [3.0, 0.0], [2.0, 2.0]])
    model = Point([0.5, 0.5])
    got = scaffold.variate_i(model, Quadratic(), a, torch.zeros(3, dtype=torch.long), batch_size=2,
                             generator=torch.Generator().manual_seed(0), like={"w": torch.zeros(2), "buf": torch.ones(1)})
    np.testing.assert_allclose(got["w"].numpy(), [0.5, 0.5] - a.numpy().mean(0), rtol=1e-6)
    assert torch.equal(got["buf"], torch.zeros(1)) and model.w.grad is None
    assert scaffold.option("auto", "sgd", 0.0) == "ii" and scaffold.option("auto", "adam", 0.0) == "i"
    assert scaffold.option("auto", "sgd", 0.9) == "i" and scaffold.option("ii", "adam", 0.0) == "ii"


N = 5
CLIENTS = {200 + p: ClientInfo(200 + p, p, 10 + p, np.zeros(2, np.int64)) for p in range(N)}


class Grid:
    def get_node_ids(self):
        return list(CLIENTS)


def rec(**named) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in named.items()})


def reply(msg, y, dc, n=None, drop_dc=False):
    pid = CLIENTS[msg.metadata.dst_node_id].partition_id
    content = RecordDict({"arrays": rec(w=y), "metrics": MetricRecord({"num-examples": n or 10 + pid,
                                                                       "train-loss": 1.0}),
                          "meta": ConfigRecord({"partition-id": pid})})
    if not drop_dc:
        content["scaffold-dc"] = rec(w=dc)
    return Message(content, reply_to=msg)


def test_server_steps_x_and_c_by_hand_and_rejects_replies_without_dc():
    """x <- weighted mean of y (server-lr 1); c <- c + (1/N) sum dc over the aggregated replies;
    round 2 sends the new c; a reply without dc, or with a non-finite one, is rejected."""
    s = Scaffold(CLIENTS, 4, seed=0, log_book=RoundLog(), num_clients=N)
    msgs = list(s.configure_train(1, rec(w=[0.0, 0.0]), ConfigRecord({}), Grid()))
    assert all(np.array_equal(to_numpy_dict(m.content["scaffold-c"])["w"], [0, 0]) for m in msgs)
    ys = {m.metadata.dst_node_id: [1.0 + i, -1.0] for i, m in enumerate(msgs)}
    dcs = {m.metadata.dst_node_id: [0.5 * i, 1.0] for i, m in enumerate(msgs)}
    good = [reply(m, ys[m.metadata.dst_node_id], dcs[m.metadata.dst_node_id]) for m in msgs[:2]]
    bad = [reply(msgs[2], [9.0, 9.0], None, drop_dc=True), reply(msgs[3], [9.0, 9.0], [np.nan, 0.0])]
    new, _ = s.aggregate_train(1, good + bad)
    nodes = [m.metadata.dst_node_id for m in msgs[:2]]
    w = np.array([CLIENTS[n].num_examples for n in nodes], np.float64)
    want = sum(wi * np.array(ys[n]) for wi, n in zip(w, nodes)) / w.sum()
    np.testing.assert_allclose(new["w"].numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(s.control["w"], sum(np.array(dcs[n]) for n in nodes) / N, rtol=1e-6)
    assert s.log_book.get(1)["clients_rejected"] == 2
    msgs2 = list(s.configure_train(2, new, ConfigRecord({}), Grid()))
    np.testing.assert_allclose(to_numpy_dict(msgs2[0].content["scaffold-c"])["w"], s.control["w"])
    assert "control" in state_of(s)


def test_scaffold_doubles_the_downlink():
    cfg = RunConfig(num_clients=N, clients_per_round=4, model="cnn")
    w0 = rec(w=np.zeros((64, 64)))
    sizes = {}
    for name in ("fedavg", "scaffold"):
        msgs = list(build_strategy(cfg.replace(strategy=name), CLIENTS, RoundLog()).configure_train(
            1, w0, ConfigRecord({}), Grid()))
        sizes[name] = wire_bytes(msgs[0])
    assert 1.95 < sizes["scaffold"] / sizes["fedavg"] < 2.05


CFG = RunConfig(num_clients=20, partition="iid", local_epochs=1, batch_size=8, model="cnn", optimizer="sgd",
                lr=0.05, strategy="scaffold")


def test_client_keeps_c_i_in_its_context_and_sends_its_change():
    """Round 1 (c_i = 0) and round 2 through client_app.train with one context: option II by hand
    from the weights the client replied, c_i+ kept in the context, dc = c_i+ - c_i."""
    ctx = context(CFG, 2)
    c = None
    held = None
    for rnd in (1, 2):
        msg = instruction(CFG, MessageType.TRAIN, rnd=rnd, pid=2)
        x = to_numpy_dict(msg.content["arrays"])
        c = {k: np.full(v.shape, 0.01 * rnd, np.float32) for k, v in x.items()}
        msg.content["scaffold-c"] = ArrayRecord({k: Array(v) for k, v in c.items()})
        msg.content["config"] = ConfigRecord({"server-round": rnd, "optimizer": "sgd", "lr": 0.05})
        out = client_app.train(msg, context=ctx).content
        y, dc = to_numpy_dict(out["arrays"]), to_numpy_dict(out["scaffold-dc"])
        steps = int(out["meta"]["steps"])
        c_i = held if held is not None else {k: np.zeros_like(v) for k, v in c.items()}
        new = to_numpy_dict(ctx.state["scaffold-ci"])
        name = "conv1.weight" if "conv1.weight" in x else next(k for k in x if k.endswith("weight"))
        expect = c_i[name] - c[name] + (x[name] - y[name]) / (steps * 0.05)
        np.testing.assert_allclose(new[name], expect, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(dc[name], new[name] - c_i[name], rtol=1e-5, atol=1e-6)
        held = new
    plain = instruction(CFG, MessageType.TRAIN, pid=2)  # no c: a plain round, no dc
    assert "scaffold-dc" not in client_app.train(plain, context(CFG, 2)).content.array_records


class Scaled(Quadratic):
    def __init__(self, a):
        self.a = a

    def loss(self, model, x, y, *, generator=None, **_):
        return 0.5 * self.a * ((model.w - x) ** 2).sum(1)


def test_scaffold_removes_client_drift_on_quadratics():
    """Four clients f_i(w) = a_i/2 ||w - b_i||^2 with unlike curvatures, all in every round, 10 local
    SGD steps: FedAvg settles away from the optimum of the mean objective (client drift), SCAFFOLD
    (the client module and the server strategy, end to end on messages) reaches it."""
    from types import SimpleNamespace

    from fedsim.app import scaffold_client

    a = [1.0, 4.0, 1.0, 4.0]
    b = [[2.0, 0.0], [-1.0, 1.0], [0.0, -2.0], [1.0, 3.0]]
    opt = sum(ai * np.array(bi) for ai, bi in zip(a, b)) / sum(a)
    clients = {300 + i: ClientInfo(300 + i, i, 10, np.zeros(2, np.int64)) for i in range(4)}

    class G:
        def get_node_ids(self):
            return list(clients)

    def run(strategy_cls, **kw):
        s = strategy_cls(clients, 4, seed=0, log_book=RoundLog(), **kw)
        ctxs = {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={}) for n in clients}
        w = rec(w=[0.0, 0.0])
        for rnd in range(1, 61):
            replies = []
            for m in s.configure_train(rnd, w, ConfigRecord({}), G()):
                i = clients[m.metadata.dst_node_id].partition_id
                model = Point(to_numpy_dict(m.content["arrays"])["w"].tolist())
                ws = SimpleNamespace(model=model, task=Scaled(a[i]))
                x = torch.tensor([b[i]] * 10)
                ctl = scaffold_client.start(m, ctxs[m.metadata.dst_node_id], ws, x, torch.zeros(10, dtype=torch.long),
                                            seed=0, rnd=rnd, pid=i, batch_size=10, optimizer="sgd", momentum=0.0)
                stats = train_local(model, ws.task, x, torch.zeros(10, dtype=torch.long), epochs=10, batch_size=10,
                                    lr=0.1, optimizer="sgd", generator=torch.Generator().manual_seed(rnd),
                                    correction=ctl.correction if ctl is not None else None)
                content = RecordDict({"arrays": rec(w=model.w.detach().numpy()),
                                      "metrics": MetricRecord({"num-examples": 10, "train-loss": 0.0})})
                if ctl is not None:
                    content["scaffold-dc"] = scaffold_client.finish(ctl, ctxs[m.metadata.dst_node_id], ws,
                                                                    stats.steps, 0.1)
                replies.append(Message(content, reply_to=m))
            w, _ = s.aggregate_train(rnd, replies)
        return to_numpy_dict(w)["w"]

    from strategies.fedavg import FedAvg

    drift = np.linalg.norm(run(FedAvg) - opt)
    fixed = np.linalg.norm(run(Scaffold, num_clients=4, variate="ii") - opt)
    assert drift > 0.1 and fixed < 1e-3, (drift, fixed)
