"""fedsim's server layer wearing one of Flower's aggregation rules (strategies/rules.py).

``Ruled`` is fedsim's FedAvg (strategies/fedavg.py: seeded selection, reply validation,
partition-id ordering, FedSGD, Maverick logging, observers for the ledger and unlearning) with
two hooks handed to Flower's own strategy object, so that every fedsim layer composes with it:

- the round's TRAIN messages: the rule's own ``configure_train`` on a grid that offers just the
  clients fedsim selected (so FedProx sends its ``proximal-mu``, FedOpt keeps the round's
  weights), reordered by partition id;
- the new global weights: ``mean`` rules take the streamed weighted mean; ``optimizer`` rules
  get that mean as their one reply and step on it; ``replies`` rules get the round's valid
  replies in partition-id order. Results are cast back to the global model's dtypes (Flower's
  optimisers compute in float64).

Shapley coalitions are valued with a copy of the rule (a server optimiser's state is not
advanced by a coalition's what-if). The rule object is checkpointed whole (its momentum and
moments outlive a round).
"""

from __future__ import annotations

import copy

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.records.wire import array_view, numpy_array
from strategies.fedavg import FedAvg, WeightedSum, _Group


class OfferedGrid:
    """A grid that offers only ``node_ids``: the rule's sampling then takes exactly fedsim's selection."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid, self._ids = grid, list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._ids)

    def __getattr__(self, name: str):
        return getattr(self._grid, name)


class Ruled(FedAvg):
    checkpointed = ("rule",)

    def __init__(self, *args, rule: Strategy, kind: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if kind not in ("mean", "optimizer", "replies"):
            raise ValueError(f"kind must be mean, optimizer or replies, got {kind!r}")
        self.rule, self.kind = rule, kind

    @property
    def keeps_replies(self) -> bool:
        return self.kind == "replies" or super().keeps_replies

    def _train_messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, node_ids: list[int],
                        grid: Grid) -> list[Message]:
        order = {n: i for i, n in enumerate(node_ids)}
        messages = list(self.rule.configure_train(server_round, arrays, config, OfferedGrid(grid, node_ids)))
        return sorted(messages, key=lambda m: order[m.metadata.dst_node_id])

    def _aggregate(self, server_round: int, group: _Group) -> ArrayRecord:
        return self._by_rule(self.rule, server_round, group.sum, group.replies)

    def _combine(self, replies: list[Message]) -> ArrayRecord:
        folded = self._fold_all(replies) if self.kind != "replies" else None
        return self._by_rule(copy.deepcopy(self.rule), 0, folded, replies)

    def _by_rule(self, rule: Strategy, server_round: int, folded: WeightedSum | None,
                 replies: list[Message]) -> ArrayRecord:
        if self.kind == "replies":
            arrays, _ = rule.aggregate_train(server_round, [_stand_in(r) for r in replies])
            return self._global if arrays is None else self._step(self._cast(arrays), self.server_lr)
        mean = folded.mean()
        if mean is None:  # every reply of weight 0
            return self._global
        if self.kind == "mean":
            return self._step(mean, self.server_lr)
        target = self._step(mean, 1.0)  # FedSGD: the optimiser's pseudo-gradient is the mean gradient
        arrays, _ = rule.aggregate_train(server_round, [_reply(target)])
        return self._cast(arrays)

    def _cast(self, arrays: ArrayRecord) -> ArrayRecord:
        """``arrays`` in the global model's dtypes (and keys' order)."""
        out = {}
        for key in self._global.keys():
            want = array_view(self._global[key]).dtype
            x = np.asarray(arrays[key].numpy())
            out[key] = numpy_array(x if x.dtype == want else x.astype(want))
        return ArrayRecord(out, keep_input=True)


def _stand_in(reply: Message) -> Message:
    """A reply for the rule to read: Bulyan and QFedAvg empty the ArrayRecords they read
    (``to_numpy_ndarrays(keep_input=False)``); the round's own replies stay whole for the layers
    that read them after (Shapley's coalitions). The arrays themselves are shared, not copied."""
    content = RecordDict({"arrays": ArrayRecord(dict(reply.content["arrays"].items()), keep_input=True),
                          "metrics": reply.content["metrics"]})
    return Message(content, dst_node_id=reply.metadata.src_node_id, message_type=MessageType.TRAIN)


def _reply(arrays: ArrayRecord) -> Message:
    """A one-reply stand-in holding the round's aggregate, as a Flower rule reads a reply."""
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 1})})
    return Message(content, dst_node_id=0, message_type=MessageType.TRAIN)
