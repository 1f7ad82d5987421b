"""A recorded run built in-process, for attack tests (no Flower simulation, no Ray).

The real ClientApp trains on TRAIN messages that carry what the ServerApp sends
(fedsim/app/server_app.py ``train_config``) and the secrets mark of a simulation; each reply
is stored as the Recording wrapper stores it. Round r + 1 starts from the client's round-r
weights (a FedAvg over this one client), so fused rounds see different w_0.
Test modules using it need the ``task_identity`` fixture."""

from __future__ import annotations

from pathlib import Path

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from client_messages import context

from fedsim.app import client_app
from fedsim.app.server_app import train_config
from fedsim.config import RunConfig, write_toml
from fedsim.data.clients import dataset
from fedsim.models.workspace import fresh_model
from fedsim.records import secrets
from fedsim.records.observations import Observation, save
from fedsim.records.wire import to_array_record, to_state_dict


def recorded_run(root: Path, cfg: RunConfig, pid: int, rounds=(1,)) -> Path:
    """A run folder under ``root`` with client ``pid``'s observations (and secrets) of ``rounds``."""
    run = root / "run"
    run.mkdir()
    write_toml(cfg.replace(out_dir=str(run)), run / "config.toml")
    sent = fresh_model(cfg, dataset(cfg, "train")).state_dict()
    for rnd in rounds:
        config = ConfigRecord({**dict(train_config(cfg)), "server-round": rnd})
        content = RecordDict({"arrays": to_array_record(sent), "config": config,
                              secrets.RECORD: ConfigRecord({"dir": str(run)})})
        msg = Message(content, dst_node_id=100 + pid, message_type=MessageType.TRAIN)
        reply = client_app.train(msg, context(cfg, pid)).content
        received = to_state_dict(reply["arrays"])
        payload = str(reply["meta"]["payload"])
        save(Observation(server_round=rnd, partition_id=pid, sent=sent, received=received, payload=payload,
                         num_examples=int(reply["metrics"]["num-examples"]),
                         metrics={"steps": int(reply["meta"]["steps"])}, config=dict(config)), run)
        sent = received if payload == "weights" else sent
    return run
