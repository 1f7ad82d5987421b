"""SCAFFOLD (Karimireddy et al. 2020, Algorithm 1): the server's side.

fedsim's FedAvg layer (selection, validation, order, streaming) with the server control
variate c, kept across rounds (and checkpointed):

- each TRAIN message carries c as the ArrayRecord ``scaffold-c`` beside the weights (the
  downlink doubles; the meter counts it) and the variate option in ``scaffold-variate``;
- each reply carries the client's dc_i as ``scaffold-dc``, validated like the weights (keys,
  shapes, finiteness) before anything is folded;
- x <- x + server-lr (mean_i y_i - x), the mean weighted as under FedAvg (server-lr 1: the mean);
- c <- c + (1 / N) sum_i dc_i over the aggregated replies, N the number of clients: dc_i is
  folded into a float64 running sum as replies stream in (the strategy observes its own folds).

The client's side (its c_i in the node context, the corrected steps, options I and II) is
fedsim/models/scaffold.py and fedsim/app/scaffold_client.py. Written by hand: no library the
project uses implements SCAFFOLD.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedsim.models.scaffold import CONTROL, DELTA
from fedsim.records.wire import array_view, numpy_array, to_array_record
from strategies.fedavg import FedAvg, _Group, reply_problem


class Scaffold(FedAvg):
    checkpointed = ("control",)

    def __init__(self, *args, num_clients: int, variate: str = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.mode == "fedsgd":
            raise ValueError("SCAFFOLD corrects local steps: mode must be fedavg")
        self.num_clients, self.variate = num_clients, variate
        self.control: dict[str, np.ndarray] | None = None  # c, the global model's floating keys and dtypes
        self._dc: dict[frozenset, dict[str, np.ndarray]] = {}  # this round's sum of dc_i per metric-key set
        self._sent: ArrayRecord | None = None  # the round's c as sent
        self.observers.append(self)

    def _train_messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, node_ids: list[int],
                        grid: Grid) -> list[Message]:
        if self.control is None:
            views = {k: array_view(a) for k, a in arrays.items()}
            self.control = {k: np.zeros(v.shape, v.dtype) for k, v in views.items()
                            if np.issubdtype(v.dtype, np.floating)}
        self._dc = {}
        config["scaffold-variate"] = self.variate
        messages = super()._train_messages(server_round, arrays, config, node_ids, grid)
        self._sent = to_array_record(self.control)  # the round's c: sent, and the reference dc_i is checked against
        for m in messages:  # a broadcast shares one RecordDict: c goes in once
            if CONTROL not in m.content.array_records:
                m.content[CONTROL] = self._sent
        return messages

    def _problem(self, reply: Message) -> str | None:
        return reply_problem(reply, self._global, {DELTA: self._sent})

    # observer of its own folds: dc_i of every valid reply, into the sum of its metric-key set
    def observe(self, server_round: int, reply: Message, keys: frozenset) -> None:
        acc = self._dc.setdefault(keys, {k: np.zeros(v.shape, np.float64) for k, v in self.control.items()})
        dc = reply.content[DELTA]
        for k, total in acc.items():
            total += array_view(dc[k])

    def aggregated(self, server_round: int, keys: frozenset | None, partitions: list[int]) -> None:
        if keys is None or keys not in self._dc:
            return
        for k, total in self._dc[keys].items():
            self.control[k] = (self.control[k] + total / self.num_clients).astype(self.control[k].dtype)
        self._dc = {}

    def _aggregate(self, server_round: int, group: _Group) -> ArrayRecord:
        mean = group.sum.mean()
        if mean is None:
            return self._global
        if self.server_lr == 1.0:
            return mean
        out = {}
        for k in self._global.keys():
            x, y = array_view(self._global[k]), array_view(mean[k])
            out[k] = numpy_array((x + self.server_lr * (y.astype(np.float64) - x)).astype(x.dtype)
                                 if np.issubdtype(x.dtype, np.floating) else y)
        return ArrayRecord(out, keep_input=True)
