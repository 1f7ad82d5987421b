"""Who is in the federation: node id -> client (partition) id, data size, label histogram.

Clients declare these once, answering a QUERY message at the start of the run.
Selection is then done over partition ids, which are stable across runs, so a
seed says exactly who trained in every round (node ids are random per run).
The label histogram is the only extra fact a client discloses (FedEMD needs it),
and, under an unlearning request, how many examples it is asked to forget.
A node that cannot say (e.g. its node config names no data) answers with an
error, whose reason the server logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import WARNING

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid


@dataclass(frozen=True)
class ClientInfo:
    node_id: int
    partition_id: int
    num_examples: int
    label_hist: np.ndarray  # (num_classes,) int64 counts of the data it trains on
    num_forget: int = 0  # examples an unlearning request asks it to forget (still on the client)


def discover_clients(grid: Grid, timeout: float = 600.0) -> dict[int, ClientInfo]:
    """Ask every connected node once; nodes that do not answer are left out (a
    WARNING with the reason). RuntimeError if none answers."""
    node_ids = sorted(grid.get_node_ids())
    messages = [Message(RecordDict({"config": ConfigRecord({"server-round": 0})}),
                        message_type=MessageType.QUERY, dst_node_id=n) for n in node_ids]
    clients, reasons = {}, []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            reason = " ".join(str(reply.error.reason).split())  # one line
            reasons.append(reason)
            log(WARNING, "discovery: node %d left out: %s", reply.metadata.src_node_id, reason)
            continue
        info = reply.content["info"]
        nid = reply.metadata.src_node_id
        clients[nid] = ClientInfo(nid, int(info["partition-id"]), int(info["num-examples"]),
                                  np.asarray(info["label-hist"], dtype=np.int64),
                                  int(info.get("num-forget", 0)))
    if not clients:
        why = f"; first reason: {reasons[0]}" if reasons else ("" if node_ids else " (no node is connected)")
        raise RuntimeError(f"no client answered the discovery query{why}")
    return clients


def check_classes(clients: dict[int, ClientInfo], num_classes: int) -> None:
    """RuntimeError (one line) unless every client's label histogram has the test set's
    classes: a node with other class directories would build a different model."""
    wrong = sorted((c.partition_id, len(c.label_hist)) for c in clients.values() if len(c.label_hist) != num_classes)
    if wrong:
        who = ", ".join(f"client {pid} declares {n}" for pid, n in wrong)
        raise RuntimeError(f"{who} classes, but the server's test set has {num_classes}; "
                           "every node's data-dir must hold the same class directories")
