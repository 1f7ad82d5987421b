"""Tell simulated clients where to keep the state that outlives a round (simulation only).

A client's node context holds state across rounds (error-feedback residuals, its copy of
the compressed global model: fedsim/app/compression_mod.py). A resumed run starts fresh
node contexts, so fedsim/app/state_mod.py saves that state after each TRAIN into the run
folder and restores it in a fresh context. This wrapper, outside the byte meter like
AskSecrets (not federated traffic, not part of a recorded observation), adds the record
``client-state`` = {"dir", "keep-from"} to every TRAIN message; keep-from is the oldest
round a kept server checkpoint may resume from, so a client prunes only what no
checkpoint can need. Added only in simulation: a deployed SuperNode is never asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from strategies.wrappers.base import StrategyWrapper, add_record

RECORD = "client-state"


class KeepClientState(StrategyWrapper):
    checkpointed = ()

    def __init__(self, inner: Strategy, root: Path, keep_from: Callable[[], int]) -> None:
        """root: the folder clients keep their state in (absolute); keep_from: the round
        of the oldest checkpoint kept (0 before the first)."""
        super().__init__(inner)
        self.root, self.keep_from = Path(root), keep_from

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        mark = ConfigRecord({"dir": str(self.root), "keep-from": int(self.keep_from())})
        for m in messages:
            add_record(m, RECORD, mark)
        return messages
