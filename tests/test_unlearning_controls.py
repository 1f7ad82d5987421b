"""The two controls of an unlearning experiment, on the client: what data a client trains on.

``fine-tune`` must train on the data the client keeps (the forget data removed exactly
as retrain removes them); ``continue`` on all of its data, forget data included. The
check watches the images that reach the model's forward pass during a real TRAIN
handler call (a CNN, so those are the training images themselves), whatever code path
the client takes. The server side (rounds, lr, selection) is in test_unlearning_protocol.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fedsim.app import client_app
from fedsim.config import ConfigError, RunConfig, load_config
from fedsim.data.clients import dataset, run_partition
from fedsim.models.workspace import fresh_model, workspace
from fedsim.records.wire import to_array_record

pytestmark = pytest.mark.usefixtures("task_identity", "one_thread")

BASE = RunConfig(num_clients=6, clients_per_round=3, partition="iid", local_epochs=1, batch_size=16, model="cnn")
FORGET_CLASS = 3


def rows(images: torch.Tensor) -> set[bytes]:
    return {r.tobytes() for r in images.reshape(len(images), -1).numpy()}


def images_trained_on(cfg: RunConfig, pid: int) -> tuple[set[bytes], Message]:
    """The distinct images a client's TRAIN handler feeds the model, and its reply."""
    ws = workspace(cfg)  # the cached workspace the handler itself uses
    seen: list[torch.Tensor] = []
    hook = ws.model.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach().cpu().clone()))
    model = fresh_model(cfg, dataset(cfg, "train"))
    config = ConfigRecord({"server-round": 1, "objective": cfg.unlearn_method, "lr": 0.01})
    msg = Message(RecordDict({"arrays": to_array_record(model.state_dict()), "config": config}),
                  dst_node_id=100 + pid, message_type=MessageType.TRAIN)
    ctx = Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid, "num-partitions": cfg.num_clients},
                  state=RecordDict(), run_config=cfg.to_flwr())
    try:
        reply = client_app.train(msg, ctx)
    finally:
        hook.remove()
    return rows(torch.cat(seen)), reply


def partition_of(pid: int) -> tuple[torch.Tensor, np.ndarray]:
    """Client pid's images and labels in the original run (no request applied)."""
    train = dataset(BASE, "train")
    idx = run_partition(BASE, train.labels)[pid]
    return train.images[torch.from_numpy(idx)], train.labels[idx]


@pytest.mark.parametrize("pid", [0, 4])
def test_fine_tune_trains_on_the_kept_data_and_continue_on_all(pid: int) -> None:
    images, labels = partition_of(pid)
    forget, kept = rows(images[torch.from_numpy(labels == FORGET_CLASS)]), rows(images[torch.from_numpy(
        labels != FORGET_CLASS)])
    assert forget and kept and not forget & kept
    request = BASE.replace(forget_class=FORGET_CLASS)
    seen, reply = images_trained_on(request.replace(unlearn_method="fine-tune"), pid)
    assert seen == kept and not seen & forget
    assert reply.content["metrics"]["num-examples"] == len(kept)
    seen, reply = images_trained_on(request.replace(unlearn_method="continue"), pid)
    assert seen == kept | forget
    assert reply.content["metrics"]["num-examples"] == len(labels)


def test_a_client_request_leaves_the_client_nothing_under_fine_tune_and_everything_under_continue() -> None:
    request = BASE.replace(forget_clients="2")
    assert len(workspace(request.replace(unlearn_method="fine-tune")).parts[2]) == 0
    images, _ = partition_of(2)
    seen, _ = images_trained_on(request.replace(unlearn_method="continue"), 2)
    assert seen == rows(images)


def test_controls_need_a_request_but_no_diffusion_model_and_preflight_accepts_them() -> None:
    from fedsim.cli.preflight import check

    with pytest.raises(ConfigError, match="needs a request"):
        RunConfig(unlearn_method="fine-tune")
    with pytest.raises(ConfigError, match="unlearn-method must be one of"):
        load_config({"unlearn-method": "finetune"})
    for method in ("fine-tune", "continue"):  # continue removes nothing, yet its request names data
        cfg = load_config({**BASE.to_flwr(), "forget-class": FORGET_CLASS, "unlearn-method": method})
        assert cfg.unlearn_method == method and cfg.model == "cnn"
        check(cfg)
