"""Ledgered: keeps the training ledger (fedsim/records/ledger.py) as rounds go by.

A wrapper inside any decoder (it sees dense updates) and around the named
strategy: ``configure_train`` notes the global model sent (and saves the
initial one); ``aggregate_train`` lets the inner strategy aggregate, then logs
the replies it aggregated (its ``aggregated_replies``: after validation) with
their example counts and, in storing rounds, their updates.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.records.ledger import LedgerWriter
from fedsim.records.wire import to_numpy_dict
from strategies.client_registry import ClientInfo
from strategies.wrappers.base import StrategyWrapper


class Ledgered(StrategyWrapper):
    """inner: a strategy that exposes ``aggregated_replies`` (strategies.fedavg.FedAvg)."""
    checkpointed = ("writer",)

    def __init__(self, inner: Strategy, writer: LedgerWriter, clients: dict[int, ClientInfo]) -> None:
        super().__init__(inner)
        self.writer, self.registry = writer, clients
        self._sent: ArrayRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self._sent is None:
            self.writer.start(to_numpy_dict(arrays))
        self._sent = arrays
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        result = self.inner.aggregate_train(server_round, replies)
        sent = to_numpy_dict(self._sent)
        store = self.writer.stores(server_round)
        entries = []
        for reply in self.inner.aggregated_replies:
            info = self.registry.get(reply.metadata.src_node_id)
            pid = info.partition_id if info else reply.metadata.src_node_id
            entries.append((pid, int(reply.content["metrics"]["num-examples"]),
                            self._update(reply, sent) if store else None))
        self.writer.record(server_round, sent, sorted(entries, key=lambda e: e[0]))
        return result

    @staticmethod
    def _update(reply: Message, sent: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        received = to_numpy_dict(reply.content["arrays"])
        meta = reply.content["meta"] if "meta" in reply.content.config_records else {}
        if str(meta.get("payload", "weights")) == "gradient":
            return dict(received)
        return {k: received[k] - sent[k] if np.issubdtype(sent[k].dtype, np.floating) else received[k]
                for k in sent}
