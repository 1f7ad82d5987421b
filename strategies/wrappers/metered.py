"""Bytes on the wire, measured: the serialized size of every message's payload.

The outermost wrapper, so it sees what really travels (compressed payloads
included), not what inner layers decode. A size is that of the message's
content (its RecordDict) as Flower's protobuf, the form a SuperLink and
SuperNode exchange. The metadata envelope (~100 B: ids, timestamps) is left
out: its varint-coded ids change from run to run, and the byte counts in
metrics.csv must be the same for the same seed.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.records.round_log import RoundLog
from fedsim.records.wire import payload_bytes
from strategies.wrappers.base import StrategyWrapper


def wire_bytes(message: Message) -> int:
    """Serialized payload size (exactly ``recorddict_to_proto(content).ByteSize()``);
    0 for an error reply, which carries no content."""
    return payload_bytes(message.content) if message.has_content() else 0


class Metered(StrategyWrapper):
    checkpointed = ("total_up", "total_down")

    def __init__(self, inner: Strategy, log: RoundLog) -> None:
        super().__init__(inner)
        self.log = log
        self.total_up = self.total_down = 0

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        sizes: dict[int, int] = {}  # a broadcast shares one RecordDict: serialize it once
        for m in messages:
            if id(m.content) not in sizes:
                sizes[id(m.content)] = wire_bytes(m)
        down = sum(sizes[id(m.content)] for m in messages)
        self.total_down += down
        self.log.record(server_round, bytes_down=down, bytes_down_total=self.total_down)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        up = 0

        def metered(stream: Iterable[Message]):  # each reply measured as it passes (a stream)
            nonlocal up
            for reply in stream:
                up += wire_bytes(reply)
                yield reply

        result = self.inner.aggregate_train(server_round, metered(replies))
        self.total_up += up
        self.log.record(server_round, bytes_up=up, bytes_up_total=self.total_up)
        return result
