"""Bytes on the wire, measured: the protobuf size of every message sent and received.

The outermost wrapper, so it sees what really travels (compressed payloads
included), not what inner layers decode. Sizes are those of Flower's
``Message`` protobuf, the form a SuperLink and SuperNode exchange.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.serde import message_to_proto
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.round_log import RoundLog
from strategies.wrapper import StrategyWrapper


def wire_bytes(message: Message) -> int:
    return message_to_proto(message).ByteSize()


class Metered(StrategyWrapper):
    def __init__(self, inner: Strategy, log: RoundLog) -> None:
        super().__init__(inner)
        self.log = log

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self.log.record(server_round, bytes_down=sum(wire_bytes(m) for m in messages))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.log.record(server_round, bytes_up=sum(wire_bytes(m) for m in replies))
        return self.inner.aggregate_train(server_round, replies)
