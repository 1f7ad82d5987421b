"""ClientApp: Flower Message -> local training -> reply. Translation only.

- QUERY: declare client id, data size and label histogram (once per run).
- TRAIN: load the global weights, train locally with the lr / local-epochs /
  batch-size / optimizer / momentum / grad-clip the server sent (the run config's where it
  sent none), FedProx's proximal term where it sent ``proximal-mu``, SCAFFOLD's corrected steps
  and control variate where it sent ``scaffold-c`` (or, in FedSGD mode,
  compute one gradient of one batch; or, in an unlearning run, the ``objective`` the server
  names, see fedsim/unlearning/local.py) and reply with weights (or gradients),
  ``num-examples`` and ``train-loss``.
- EVALUATE: mean loss of the global model on the client's own data.

In simulation, when the server marks a TRAIN message with a ``secrets`` record (a
recorded client and round), the client also writes what it trained on into the run
folder (fedsim/records/secrets.py): the ground truth attacks are scored against.

Which data and client id: fedsim/app/node_data.py (node config data-dir or partition-id).
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.app import scaffold_client
from fedsim.app.compression_mod import compression_mod
from fedsim.app.fault_mod import fault_mod
from fedsim.app.malicious_mod import malicious_mod
from fedsim.app.node_data import node_workspace
from fedsim.app.state_mod import state_mod
from fedsim.models.train import batch_gradient, per_sample_losses, train_local
from fedsim.records import secrets
from fedsim.records.wire import load_record, to_array_record
from fedsim.rng import torch_generator


class _ClientApp(ClientApp):
    """Flower's ClientApp, pickled by reference (the name ``app`` in this module): Flower's
    simulation sends the loaded app to a Ray actor with every message, inside a closure that
    cloudpickle copies by value (0.18 ms a message in the server process, 0.05 ms to rebuild
    it in the actor). By reference the actor looks up the app it has already imported."""

    def __reduce__(self) -> str:
        return "app"


# state_mod outermost: it restores a resumed node's context before compression_mod reads it, and
# saves it after compression_mod has updated it; each acts only when the server's message asks;
# malicious_mod innermost, so the codec encodes what a malicious client sends
app = _ClientApp(mods=[state_mod, fault_mod, compression_mod, malicious_mod])  # fault/malicious: robustness studies


def _setup(context: Context):
    """(run config, workspace, client id); NodeDataError if the node config names no data."""
    return node_workspace(context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    cfg, ws, pid = _setup(context)
    info = ConfigRecord({"partition-id": pid, "num-examples": int(len(ws.parts[pid])),
                         "label-hist": [int(c) for c in ws.label_hist(pid)],
                         "num-forget": int(len(ws.forget[pid]))})
    return Message(RecordDict({"info": info}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, ws, pid = _setup(context)
    sent = msg.content["config"]
    rnd = int(sent["server-round"])
    lr = float(sent.get("lr", cfg.lr))
    epochs = int(sent.get("local-epochs", cfg.local_epochs))
    batch_size = int(sent.get("batch-size", cfg.batch_size))
    optimizer = str(sent.get("optimizer", cfg.optimizer))
    momentum, grad_clip = float(sent.get("momentum", cfg.momentum)), float(sent.get("grad-clip", cfg.grad_clip))
    load_record(ws.model, msg.content["arrays"])
    images, labels = ws.client_data(pid)
    gen = torch_generator(cfg.seed, "train", rnd, pid)
    objective = str(sent.get("objective", "train"))
    secrets_root = _secrets_root(msg, context) if objective == "train" else None  # unlearning rounds: not traced
    trace = [] if secrets_root is not None else None
    extra, extra_arrays = {}, {}
    if objective != "train":  # an unlearning round (strategies/unlearning/protocol.py)
        from fedsim.unlearning.local import run_objective

        tensors, payload, stats = run_objective(objective, ws, pid, cfg, sent, epochs=epochs,
                                                batch_size=batch_size, lr=lr, generator=gen)
        arrays = to_array_record(tensors)
        extra["num-forget"] = int(len(ws.forget[pid]))  # every reply of the round: FedAvg needs the same keys
    elif cfg.mode == "fedsgd":
        grads, stats = batch_gradient(ws.model, ws.task, images, labels,
                                      batch_size=batch_size, generator=gen, trace=trace)
        arrays, payload = to_array_record(grads), "gradient"
    else:
        control = scaffold_client.start(msg, context, ws, images, labels, seed=cfg.seed, rnd=rnd, pid=pid,
                                        batch_size=batch_size, optimizer=optimizer, momentum=momentum)
        stats = train_local(ws.model, ws.task, images, labels, epochs=epochs,
                            batch_size=batch_size, lr=lr, optimizer=optimizer,
                            momentum=momentum, grad_clip=grad_clip, generator=gen, trace=trace,
                            proximal_mu=float(sent.get("proximal-mu", 0.0)),  # FedProx's server sends it
                            correction=control.correction if control is not None else None)
        arrays = to_array_record(ws.model.state_dict())
        payload = "weights"
        if control is not None:
            extra_arrays[scaffold_client.DELTA] = scaffold_client.finish(control, context, ws, stats.steps, lr)
    if trace is not None:
        secrets.save(secrets_root, rnd, pid, trace, ws.parts[pid], payload=payload,
                     epochs=1 if payload == "gradient" else epochs)
    metrics = MetricRecord({"num-examples": stats.num_examples, "train-loss": stats.loss, **extra})
    meta = ConfigRecord({"partition-id": pid, "payload": payload, "steps": stats.steps})
    return Message(RecordDict({"arrays": arrays, **extra_arrays, "metrics": metrics, "meta": meta}), reply_to=msg)


def _secrets_root(msg: Message, context: Context) -> Path | None:
    """The run folder to write this round's secrets into, if the server asked (it does only in
    simulation); never on a node with its own data (data-dir), whatever the message says."""
    if secrets.RECORD not in msg.content.config_records or "data-dir" in context.node_config:
        return None
    return Path(str(msg.content[secrets.RECORD]["dir"]))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, ws, pid = _setup(context)
    rnd = int(msg.content["config"]["server-round"])
    load_record(ws.model, msg.content["arrays"])
    images, labels = ws.client_data(pid)
    losses = per_sample_losses(ws.model, ws.task, images, labels,
                               generator=torch_generator(cfg.seed, "client-eval", rnd, pid))
    metrics = MetricRecord({"num-examples": len(losses), "eval-loss": float(losses.mean())})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
