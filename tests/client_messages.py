"""A client's context and the server's instruction to it, built by hand for tests that call
ClientApp functions and mods in one process (pytest puts tests/ on sys.path)."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedsim.config import RunConfig
from fedsim.data.clients import dataset
from fedsim.models.workspace import fresh_model
from fedsim.records.wire import to_array_record


def context(cfg: RunConfig, pid: int) -> Context:
    """The node context of partition ``pid`` (node id 100 + pid), with empty state."""
    return Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid, "num-partitions": cfg.num_clients},
                   state=RecordDict(), run_config=cfg.to_flwr())


def instruction(cfg: RunConfig, kind: str, rnd: int = 1, pid: int = 0) -> Message:
    """A ``kind`` message of round ``rnd`` to partition ``pid`` carrying a fresh model."""
    model = fresh_model(cfg, dataset(cfg, "train"))
    content = RecordDict({"arrays": to_array_record(model.state_dict()),
                          "config": ConfigRecord({"server-round": rnd})})
    return Message(content, dst_node_id=100 + pid, message_type=kind)
