"""Continue a run from a checkpoint without copying Flower's round loop.

``Strategy.start`` counts rounds from 1; a run resumed after round R must call every
layer with rounds R+1, R+2, ... (seeds, schedules, unlearning phases, the ledger and
metrics.csv are keyed by the run's round). This outermost wrapper adds R to the round
of every hook, so the layers inside see the run's own round numbers; the ServerApp
starts Flower's loop with the checkpoint's weights and ``rounds - R`` rounds and shifts
``evaluate_fn`` the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from strategies.wrappers.base import StrategyWrapper


class Resumed(StrategyWrapper):
    checkpointed = ()  # holds nothing of its own; the layers inside are checkpointed

    def __init__(self, inner: Strategy, offset: int) -> None:
        super().__init__(inner)
        self.offset = offset

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.inner.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round + self.offset, replies)
