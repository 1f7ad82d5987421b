"""fedsim/app/client_app.py handlers called in-process (no Ray): the same Message in
and reply out that a SuperNode would see."""

from __future__ import annotations

import pickle
import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from client_messages import context, instruction

from fedsim.app import client_app
from fedsim.config import RunConfig
from fedsim.data.clients import dataset
from fedsim.models.workspace import fresh_model, workspace
from fedsim.records.wire import to_state_dict

pytestmark = pytest.mark.usefixtures('task_identity')

CFG = RunConfig(num_clients=20, partition="iid", local_epochs=1, batch_size=8, model="cnn")


def test_query_declares_partition_and_histogram() -> None:
    reply = client_app.query(Message(RecordDict({"config": ConfigRecord({"server-round": 0})}),
                                     dst_node_id=103, message_type=MessageType.QUERY), context(CFG, 3))
    info = reply.content["info"]
    ws = workspace(CFG)
    assert info["partition-id"] == 3 and info["num-examples"] == len(ws.parts[3])
    assert sum(info["label-hist"]) == info["num-examples"] and len(info["label-hist"]) == 10


def test_train_reply_is_deterministic_and_changes_weights() -> None:
    msg = instruction(CFG, MessageType.TRAIN, pid=2)
    a = client_app.train(msg, context(CFG, 2)).content
    b = client_app.train(msg, context(CFG, 2)).content
    sa, sb, s0 = to_state_dict(a["arrays"]), to_state_dict(b["arrays"]), to_state_dict(msg.content["arrays"])
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], s0[k]) for k in sa)
    assert a["metrics"]["num-examples"] == len(workspace(CFG).parts[2])
    assert a["meta"]["payload"] == "weights" and a["meta"]["partition-id"] == 2


def test_train_uses_the_optimizer_the_server_sent() -> None:
    """The run config says adam; the message says sgd with momentum 0.9 (server_app.train_config):
    the client trains as the message says, so the recorded config is what it ran."""
    from fedsim.app.server_app import train_config
    from fedsim.models.train import ClassifierTask, train_local
    from fedsim.rng import torch_generator

    sent_cfg = CFG.replace(optimizer="sgd", momentum=0.9, lr=0.05)
    config = dict(train_config(sent_cfg))
    assert (config["optimizer"], config["momentum"], config["grad-clip"], config["shuffle"]) == (
        "sgd", 0.9, 0.0, "per-epoch")
    msg = instruction(CFG, MessageType.TRAIN, pid=2)
    msg.content["config"] = ConfigRecord({**config, "server-round": 1})
    got = to_state_dict(client_app.train(msg, context(CFG, 2)).content["arrays"])
    model = fresh_model(CFG, dataset(CFG, "train"))
    images, labels = workspace(CFG).client_data(2)
    train_local(model, ClassifierTask(), images, labels, epochs=CFG.local_epochs, batch_size=CFG.batch_size,
                lr=0.05, optimizer="sgd", momentum=0.9, generator=torch_generator(CFG.seed, "train", 1, 2))
    assert all(torch.allclose(v, got[k], atol=1e-6) for k, v in model.state_dict().items())


def test_worker_state_built_once() -> None:
    client_app.train(instruction(CFG, MessageType.TRAIN, pid=0), context(CFG, 0))
    before = workspace(CFG)
    client_app.train(instruction(CFG, MessageType.TRAIN, pid=5), context(CFG, 5))
    assert workspace(CFG) is before and workspace(CFG).model is before.model


def test_fedsgd_replies_one_gradient() -> None:
    cfg = CFG.replace(mode="fedsgd")
    msg = instruction(cfg, MessageType.TRAIN, pid=1)
    reply = client_app.train(msg, context(cfg, 1)).content
    assert reply["meta"]["payload"] == "gradient"
    assert reply["metrics"]["num-examples"] == min(cfg.batch_size, len(workspace(cfg).parts[1]))
    assert set(reply["arrays"].keys()) == set(msg.content["arrays"].keys())


def test_evaluate_reports_loss() -> None:
    reply = client_app.evaluate(instruction(CFG, MessageType.EVALUATE, pid=4), context(CFG, 4)).content
    assert np.isfinite(reply["metrics"]["eval-loss"]) and reply["metrics"]["num-examples"] > 0


def test_flwr_run_federation_size_overrides_num_clients() -> None:
    ctx = context(CFG, 1)
    ctx.node_config["num-partitions"] = 4  # `flwr run .` with 4 supernodes
    reply = client_app.query(Message(RecordDict({"config": ConfigRecord({"server-round": 0})}),
                                     dst_node_id=101, message_type=MessageType.QUERY), ctx)
    assert reply.content["info"]["num-examples"] == len(workspace(CFG.replace(num_clients=4, clients_per_round=4)).parts[1])


def test_train_adds_the_proximal_term_the_server_sent() -> None:
    """FedProx's configure_train sends proximal-mu: the client's weights end nearer the global ones
    the larger mu is (and mu = 0 is the plain objective, bit for bit)."""
    msg = instruction(CFG, MessageType.TRAIN, pid=2)
    s0 = to_state_dict(msg.content["arrays"])

    def distance(mu: float | None) -> float:
        m = instruction(CFG, MessageType.TRAIN, pid=2)
        m.content["config"] = ConfigRecord({"server-round": 1, **({} if mu is None else {"proximal-mu": mu})})
        got = to_state_dict(client_app.train(m, context(CFG, 2)).content["arrays"])
        return float(sum(((got[k] - s0[k]).float() ** 2).sum() for k in got) ** 0.5)

    plain, zero, strong = distance(None), distance(0.0), distance(50.0)
    assert zero == plain
    assert strong < 0.5 * plain


def test_client_app_pickles_by_reference():
    """Flower's simulation sends the app to a Ray actor with every message, in a closure:
    by reference the actor reuses the app it imported instead of a copy of it."""
    from ray import cloudpickle

    from fedsim.app.client_app import app

    assert pickle.loads(pickle.dumps(app)) is app

    def outer(client_app):
        return lambda: client_app  # how Flower's engine wraps the loaded app

    assert cloudpickle.loads(cloudpickle.dumps(outer(app)))() is app
