"""Base for strategies that wrap another one (compression, recording, metering).

Every hook forwards to ``inner``; a subclass overrides only the hook it
changes. The round loop stays in Flower's ``Strategy.start``, which calls the
outermost strategy's hooks.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


def add_record(message: Message, key: str, record: ConfigRecord) -> None:
    """Add ``record`` under ``key`` to this message alone: a broadcast's messages share one
    RecordDict, so the message gets a copy with the record added."""
    content = RecordDict(dict(message.content))
    content[key] = record
    message.content = content


class StrategyWrapper(Strategy):
    checkpointed = ("inner",)  # a layer's own state: fedsim/records/checkpoint.py

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner

    def __getattr__(self, name: str):  # expose the inner strategy's state (e.g. .clients)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()
