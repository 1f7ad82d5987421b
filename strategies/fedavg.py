"""FedAvg (McMahan et al. 2017) with seeded selection and reply validation.

Extends Flower's ``FedAvg`` through its hooks only:
- ``configure_train`` draws clients with ``select``, which asks the pluggable
  selector (strategies/selection/selectors.py: random, FedEMD, Shapley) with a generator
  derived from (seed, "select", round), over stable partition ids, and logs who
  was chosen (and, for Maverick clients, their selection probability and count).
- ``aggregate_train`` folds each reply into running float64 sums as it arrives
  (strategies/fold.py), in partition-id order through a small reorder buffer, so float
  sums are the same in every run and the server never holds the round's replies: failed
  replies are dropped, replies whose arrays do not match the global model's keys/shapes
  or are not finite are rejected (logged, counted, never aggregated); the sample-weighted
  mean is accumulated over zero-copy views (Flower's own ``aggregate_arrayrecords``
  decodes every array through ``np.load``, 1.8 s per 100 replies of ddpm-small, and needs
  them all at once); metrics are aggregated with Flower's ``train_metrics_aggr_fn`` over
  the replies' MetricRecords (kept: a few floats each), among the replies sharing the
  most common metric-key set (a sum per set, at most ``MAX_KEYSETS``).
  Replies whose weights sum to 0 (under sample weighting, clients that kept no
  data: the forget-only updates of an unlearning round, which
  strategies/unlearning/protocol.py adds itself) leave the weights unchanged and
  their metrics are plain means. Layers that need the replies themselves register as
  ``observers`` and see each valid reply as it is folded.
  In FedSGD mode replies carry gradients: w <- w - server_lr * weighted mean.
  A selector that values contributions (Shapley) then gets U(coalition): the
  ``utility`` score of the model aggregated from that coalition's replies only.
Another aggregation rule (Flower's FedProx, FedAdam, Krum, ...) wears all of this through
strategies/ruled.py, which overrides the hooks ``_train_messages`` (who gets what),
``_aggregate`` (the round's folded group to new weights) and ``_combine`` (a coalition's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import WARNING
from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from fedsim.records.round_log import RoundLog
from fedsim.records.wire import array_view, numpy_array
from fedsim.rng import derive
from strategies.client_registry import ClientInfo
from strategies.fold import InOrder, WeightedSum
from strategies.selection.selectors import RandomSelector, Selector
from strategies.selection.shapley import RoundContributions


def reply_problem(reply: Message, reference: ArrayRecord, extra: dict[str, ArrayRecord] | None = None) -> str | None:
    """Why a train reply must not be aggregated, or None if it is sound. ``extra``: further
    ArrayRecords the reply must hold, by name, each checked as 'arrays' is (SCAFFOLD's)."""
    if reply.has_error():
        return f"client error: {reply.error.reason}"
    content = reply.content
    extra = extra or {}
    if sorted(content.array_records) != sorted(["arrays", *extra]) or list(content.metric_records) != ["metrics"]:
        names = "one ArrayRecord 'arrays'" + "".join(f", one '{n}'" for n in extra)
        return f"reply must hold exactly {names} and one MetricRecord 'metrics'"
    if "num-examples" not in content["metrics"]:
        return "reply lacks num-examples"
    for name, ref in [("arrays", reference), *extra.items()]:
        problem = _arrays_problem(content[name], ref)
        if problem is not None:
            return problem if name == "arrays" else f"{name}: {problem}"
    return None


def _arrays_problem(arrays: ArrayRecord, reference: ArrayRecord) -> str | None:
    if set(arrays.keys()) != set(reference.keys()):
        return "array keys differ from the global model's"
    for key, ref in reference.items():
        if tuple(arrays[key].shape) != tuple(ref.shape):
            return f"array '{key}' has shape {tuple(arrays[key].shape)}, expected {tuple(ref.shape)}"
        # A float64 sum is finite iff every element is (inf and nan propagate; float32
        # inputs cannot overflow it): no boolean temporaries. The array's own (float32) sum
        # is finite for every sound reply and costs half; only where it is not (a non-finite
        # element, or finite ones that overflow float32) is the float64 sum asked.
        x = array_view(arrays[key])
        if not np.isfinite(x.sum()) and not np.isfinite(x.sum(dtype=np.float64)):
            return f"array '{key}' has non-finite values"
    return None


MAX_KEYSETS = 4  # metric-key sets summed apart in a round (the most common one is aggregated)


class ReplyObserver(Protocol):
    """A layer that needs the aggregated replies themselves (the ledger, unlearning): it sees
    each valid reply as it is folded, with its metric-key set, then which set and which
    partitions the round aggregated (the replies of other sets are not aggregated)."""

    def observe(self, server_round: int, reply: Message, keys: frozenset) -> None: ...

    def aggregated(self, server_round: int, keys: frozenset | None, partitions: list[int]) -> None: ...


@dataclass
class _Group:
    """The folded replies that share one metric-key set (Flower averages metrics over equal keys)."""
    keys: frozenset
    sum: WeightedSum
    metrics: list[RecordDict] = field(default_factory=list)  # a few floats per reply
    pids: list[int] = field(default_factory=list)
    replies: list[Message] = field(default_factory=list)  # only where the strategy keeps_replies


def _most_common(groups: dict[frozenset, _Group]) -> tuple[_Group | None, list[_Group]]:
    """The group with the most replies (the first folded on a tie) and the others."""
    if not groups:
        return None, []
    best = max(groups.values(), key=lambda g: len(g.pids))  # max keeps the first of equals
    return best, [g for g in groups.values() if g is not best]


class FedAvg(FlowerFedAvg):
    checkpointed = ("_times_selected", "selector")  # what outlives a round (fedsim/records/checkpoint.py)

    def __init__(self, clients: dict[int, ClientInfo], clients_per_round: int, *, seed: int,
                 log_book: RoundLog | None = None, mode: str = "fedavg", server_lr: float = 1.0,
                 selector: Selector | None = None, weighting: str = "samples",
                 utility: Callable[[ArrayRecord], float] | None = None,
                 mavericks: Iterable[int] = (), schedule: Callable[[int], int] | None = None,
                 malicious: Iterable[int] = ()) -> None:
        """selector: who trains (default uniform); schedule: how many train in a round
        (default clients_per_round, see strategies/compression/schedule.py); weighting: "samples" (FedAvg) or "uniform";
        utility: score of a global model (needed by valuing selectors); mavericks: partition
        ids whose selection probability and count go into metrics.csv; malicious: partition ids of
        misbehaving clients (fedsim/data/malicious.py), counted per round among the selected and the
        aggregated."""
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=1)
        if weighting not in ("samples", "uniform"):
            raise ValueError(f"weighting must be 'samples' or 'uniform', got {weighting!r}")
        self.clients = clients
        self.clients_per_round = clients_per_round
        self.schedule = schedule or (lambda server_round: clients_per_round)
        self.seed = seed
        self.log_book = log_book or RoundLog()
        self.mode = mode
        self.server_lr = server_lr
        self.selector = selector or RandomSelector()
        if self.selector.needs_contributions and utility is None:
            raise ValueError(f"the {self.selector.name} selector needs a utility function")
        self.weighting = weighting
        self.utility = utility
        self.mavericks = sorted(set(mavericks))
        self._times_selected = {m: 0 for m in self.mavericks}
        self.malicious = frozenset(malicious)
        self._global: ArrayRecord | None = None
        self.observers: list[ReplyObserver] = []  # layers that need the aggregated replies (e.g. the ledger)
        self._order: list[int] = []  # the round's selected partition ids, ascending: the folding order
        self._guess = 1.0  # the round's total weight if every selected client answers as declared

    @property
    def metric_columns(self) -> list[str]:
        """Extra metrics.csv columns this strategy fills."""
        cols = [f"maverick_{m}_{what}" for m in self.mavericks for what in ("prob", "selections")]
        cols += ["typical_prob"] if self.mavericks else []
        return cols + (["malicious_sampled", "malicious_aggregated"] if self.malicious else [])

    # -- selection ---------------------------------------------------------
    def select(self, server_round: int, candidates: list[ClientInfo]) -> list[ClientInfo]:
        """The selector's k distinct clients, drawn from (seed, "select", round)."""
        if self.mavericks:
            self._log_probabilities(server_round, candidates)
        rng = derive(self.seed, "select", server_round)
        k = min(self.schedule(server_round), len(candidates))
        chosen = self.selector.select(server_round, candidates, k, rng)
        for c in chosen:
            if c.partition_id in self._times_selected:
                self._times_selected[c.partition_id] += 1
        self.log_book.record(server_round, **{f"maverick_{m}_selections": n
                                              for m, n in self._times_selected.items()})
        return chosen

    def _log_probabilities(self, server_round: int, candidates: list[ClientInfo]) -> None:
        """P_t of each Maverick and the median P_t of the other clients (one draw's weights)."""
        p = self.selector.probabilities(server_round, candidates)
        pid = [c.partition_id for c in candidates]
        row = {f"maverick_{m}_prob": float(p[pid.index(m)]) if m in pid else 0.0 for m in self.mavericks}
        typical = [q for i, q in zip(pid, p) if i not in self._times_selected]
        if typical:
            row["typical_prob"] = float(np.median(typical))
        self.log_book.record(server_round, **row)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        connected = set(grid.get_node_ids())
        candidates = sorted((c for n, c in self.clients.items()
                             if n in connected and self.selector.eligible(server_round, c)),
                            key=lambda c: c.partition_id)  # e.g. a client left without data cannot train
        chosen = self.select(server_round, candidates)
        self._global = arrays
        self._order = sorted(c.partition_id for c in chosen)
        self._guess = float(sum(c.num_examples for c in chosen) if self.weighting == "samples" else len(chosen))
        config["server-round"] = server_round
        self.log_book.record(server_round, clients_sampled=len(chosen),
                             selected=" ".join(str(c.partition_id) for c in chosen))
        if self.malicious:
            self.log_book.record(server_round, malicious_sampled=sum(c.partition_id in self.malicious for c in chosen))
        in_order = sorted(chosen, key=lambda c: c.partition_id)  # replies then arrive about in folding order
        return self._train_messages(server_round, arrays, config, [c.node_id for c in in_order], grid)

    def _train_messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, node_ids: list[int],
                        grid: Grid) -> list[Message]:
        """The round's TRAIN messages to ``node_ids`` (in that order): the weights and the config."""
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, node_ids, MessageType.TRAIN)

    @property
    def keeps_replies(self) -> bool:
        """Whether a round holds its valid replies (Shapley's coalitions; a rule that needs them all)."""
        return self.selector.needs_contributions

    # -- aggregation -------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate and fold each reply as it arrives (strategies/fold.py): the server holds
        running sums, the replies waiting for an earlier partition's, and (Shapley only)
        the round's contents."""
        order = InOrder(self._order)
        groups: dict[frozenset, _Group] = {}
        arrived = failed = rejected = 0
        for reply in replies:
            arrived += 1
            pid = self._partition_of(reply)
            problem = self._problem(reply)
            if problem is not None:
                failed += reply.has_error()
                rejected += not reply.has_error()
                log(WARNING, "round %d: reply of client %d (node %d) not aggregated: %s",
                    server_round, pid, reply.metadata.src_node_id, problem)
            for ready in order.push(pid, reply if problem is None else None):
                rejected += self._fold(server_round, ready, groups)
        for ready in order.rest():
            rejected += self._fold(server_round, ready, groups)
        sampled = self.log_book.get(server_round).get("clients_sampled", arrived)
        group, odd = _most_common(groups)
        for other in odd:
            for pid in other.pids:
                log(WARNING, "round %d: reply of client %d not aggregated: its metric keys differ "
                    "from the other replies'", server_round, pid)
        rejected += sum(len(g.pids) for g in odd)
        self.log_book.record(server_round, clients_failed=failed + max(sampled - arrived, 0),
                             clients_rejected=rejected)
        if self.malicious:
            self.log_book.record(server_round, malicious_aggregated=sum(
                p in self.malicious for p in (group.pids if group else [])))
        for observer in self.observers:
            observer.aggregated(server_round, group.keys if group else None, group.pids if group else [])
        if group is None:
            return None, None
        arrays = self._aggregate(server_round, group)
        metrics = self._metrics(group.metrics)
        if "train-loss" in metrics:
            self.log_book.record(server_round, train_loss=float(metrics["train-loss"]))
        if self.selector.needs_contributions:
            self._value_contributions(server_round, group)
        return arrays, metrics

    def _problem(self, reply: Message) -> str | None:
        """Why this reply must not be aggregated (None: fold it)."""
        return reply_problem(reply, self._global)

    def _fold(self, server_round: int, reply: Message | None, groups: dict[frozenset, _Group]) -> int:
        """Add a valid reply to the sums of its metric-key set; 1 if it had to be rejected."""
        if reply is None:
            return 0
        metrics = reply.content["metrics"]
        keys = frozenset(metrics.keys())
        if keys not in groups:
            if len(groups) >= MAX_KEYSETS:
                log(WARNING, "round %d: reply of client %d not aggregated: a %dth set of metric keys",
                    server_round, self._partition_of(reply), MAX_KEYSETS + 1)
                return 1
            groups[keys] = _Group(keys, WeightedSum(self._global, self._guess))
        group = groups[keys]
        weight = float(metrics[self.weighted_by_key]) if self.weighting == "samples" else 1.0
        group.sum.add(reply.content["arrays"], weight)
        group.metrics.append(RecordDict({"metrics": metrics}))
        group.pids.append(self._partition_of(reply))
        if self.keeps_replies:
            group.replies.append(reply)
        for observer in self.observers:
            observer.observe(server_round, reply, keys)
        return 0

    def _aggregate(self, server_round: int, group: _Group) -> ArrayRecord:
        """The new global weights from the round's aggregated group."""
        return self._finish(group.sum)

    def _finish(self, folded: WeightedSum) -> ArrayRecord:
        """The new global weights (replies all of weight 0: the global weights unchanged)."""
        arrays = folded.mean()
        return self._global if arrays is None else self._step(arrays, self.server_lr)

    def _step(self, arrays: ArrayRecord, lr: float) -> ArrayRecord:
        """FedSGD (replies carry gradients): w - lr * the aggregated gradient; else the aggregate itself."""
        if self.mode != "fedsgd":
            return arrays
        return ArrayRecord({k: numpy_array(array_view(self._global[k]) - lr * array_view(arrays[k]))
                            for k in self._global.keys()}, keep_input=True)

    def _fold_all(self, replies: list[Message]) -> WeightedSum:
        """These replies folded as a round folds them."""
        weights = [float(r.content["metrics"][self.weighted_by_key]) if self.weighting == "samples" else 1.0
                   for r in replies]
        folded = WeightedSum(self._global, sum(weights))
        for r, w in zip(replies, weights):
            folded.add(r.content["arrays"], w)
        return folded

    def _combine(self, replies: list[Message]) -> ArrayRecord:
        """The global weights aggregated from these replies alone (a Shapley coalition)."""
        return self._finish(self._fold_all(replies))

    def _metrics(self, contents: list[RecordDict]) -> MetricRecord:
        """Flower's weighted means; plain means if the weights sum to 0 (forget-only replies)."""
        if sum(float(c["metrics"][self.weighted_by_key]) for c in contents) > 0:
            return self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        keys = [k for k in contents[0]["metrics"].keys() if k != self.weighted_by_key]
        means = {k: np.mean([c["metrics"][k] for c in contents], axis=0) for k in keys}
        return MetricRecord({k: v.tolist() if v.ndim else float(v) for k, v in means.items()})

    def _value_contributions(self, server_round: int, group: _Group) -> None:
        kept = [(self.clients[r.metadata.src_node_id], r) for r in group.replies
                if r.metadata.src_node_id in self.clients]

        def utility(members: tuple[int, ...]) -> float:
            return self.utility(self._combine([kept[j][1] for j in members]))

        self.selector.observe(server_round, RoundContributions([info for info, _ in kept], utility))

    def _partition_of(self, reply: Message) -> int:
        info = self.clients.get(reply.metadata.src_node_id)
        return info.partition_id if info else reply.metadata.src_node_id
