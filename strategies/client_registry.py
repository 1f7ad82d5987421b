"""Who is in the federation: node id -> partition id, data size, label histogram.

Clients declare these once, answering a QUERY message at the start of the run.
Selection is then done over partition ids, which are stable across runs, so a
seed says exactly who trained in every round (node ids are random per run).
The label histogram is the only extra fact a client discloses (FedEMD needs it),
and, under an unlearning request, how many examples it is asked to forget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid


@dataclass(frozen=True)
class ClientInfo:
    node_id: int
    partition_id: int
    num_examples: int
    label_hist: np.ndarray  # (num_classes,) int64 counts of the data it trains on
    num_forget: int = 0  # examples an unlearning request asks it to forget (still on the client)


def discover_clients(grid: Grid, timeout: float = 600.0) -> dict[int, ClientInfo]:
    """Ask every connected node once; nodes that do not answer are left out."""
    node_ids = sorted(grid.get_node_ids())
    messages = [Message(RecordDict({"config": ConfigRecord({"server-round": 0})}),
                        message_type=MessageType.QUERY, dst_node_id=n) for n in node_ids]
    clients = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            continue
        info = reply.content["info"]
        nid = reply.metadata.src_node_id
        clients[nid] = ClientInfo(nid, int(info["partition-id"]), int(info["num-examples"]),
                                  np.asarray(info["label-hist"], dtype=np.int64),
                                  int(info.get("num-forget", 0)))
    return clients
