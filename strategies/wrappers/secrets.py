"""Ask the recorded clients to write down what they trained on (simulation only).

The outermost wrapper, outside the byte meter. In a recorded round, each TRAIN message to
a recorded client gets one more record, ``secrets`` = {"dir": the run folder}; the client
then writes the samples (and diffusion noise) it used to fedsim/records/secrets.py's file,
the ground truth an attack on its observation is scored against. This is instrumentation
of the simulation, not federated traffic: it is not metered (bytes_down is unchanged), not
part of the recorded observation (whose config is the "config" record), and
build_strategy adds it only when the ServerApp runs in the simulation engine, so a
deployed SuperNode is never asked. The server never reads the files.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.records.secrets import RECORD
from strategies.client_registry import ClientInfo
from strategies.wrappers.base import StrategyWrapper, add_record


class AskSecrets(StrategyWrapper):
    def __init__(self, inner: Strategy, root: Path, clients: dict[int, ClientInfo], *,
                 partitions: set[int] | None = None, rounds: set[int] | None = None) -> None:
        """root: the run folder (absolute: the clients run in other processes);
        partitions / rounds: those recorded (None: all), as Recording's."""
        super().__init__(inner)
        self.root, self.registry = Path(root), clients
        self.partitions, self.rounds = partitions, rounds

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        if self.rounds is not None and server_round not in self.rounds:
            return messages
        for m in messages:
            info = self.registry.get(m.metadata.dst_node_id)
            if info is None or (self.partitions is not None and info.partition_id not in self.partitions):
                continue
            add_record(m, RECORD, ConfigRecord({"dir": str(self.root)}))
        return messages
