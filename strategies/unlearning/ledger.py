"""Ledgered: keeps the training ledger (fedsim/records/ledger.py) as rounds go by.

A wrapper inside any decoder (it sees dense updates) and around the named
strategy: ``configure_train`` notes the global model sent (and saves the
initial one); it observes the inner strategy's aggregation (a ``ReplyObserver`` of
strategies/fedavg.py): each valid reply, as it is folded, goes into the ledger with its
example count and, in storing rounds, its update, written at once (the server never
holds the round's updates); at the round's end, the partitions in the end aggregated.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.records.ledger import LedgerWriter
from fedsim.records.wire import to_numpy_dict
from strategies.client_registry import ClientInfo
from strategies.wrappers.base import StrategyWrapper


class Ledgered(StrategyWrapper):
    """inner: a strategy that takes ``observers`` (strategies.fedavg.FedAvg)."""
    checkpointed = ("writer",)

    def __init__(self, inner: Strategy, writer: LedgerWriter, clients: dict[int, ClientInfo]) -> None:
        super().__init__(inner)
        self.writer, self.registry = writer, clients
        self._sent: dict[str, np.ndarray] | None = None  # the round's global model (zero-copy views)
        inner.observers.append(self)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self._sent is None:
            self.writer.start(to_numpy_dict(arrays))
        self._sent = to_numpy_dict(arrays)
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self.writer.open_round(server_round, self._sent, len(messages))
        return messages

    def observe(self, server_round: int, reply: Message, keys: frozenset) -> None:
        info = self.registry.get(reply.metadata.src_node_id)
        pid = info.partition_id if info else reply.metadata.src_node_id
        self.writer.add(pid, int(reply.content["metrics"]["num-examples"]),
                        lambda: self._update(reply, self._sent))

    def aggregated(self, server_round: int, keys: frozenset | None, partitions: list[int]) -> None:
        self.writer.close_round(partitions)

    @staticmethod
    def _update(reply: Message, sent: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        received = to_numpy_dict(reply.content["arrays"])
        meta = reply.content["meta"] if "meta" in reply.content.config_records else {}
        if str(meta.get("payload", "weights")) == "gradient":
            return dict(received)
        return {k: received[k] - sent[k] if np.issubdtype(sent[k].dtype, np.floating) else received[k]
                for k in sent}
