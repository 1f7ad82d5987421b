"""Unlearning: the server side of a deletion request, as a wrapper and a selector.

A fine-tuning unlearning run (``fedsim unlearn --method gradient-ascent |
erasediff | salun | msgm``) starts from the trained model and goes through
phases; the forget data never leave the clients that hold them:

    salun only      round 1: "saliency": each client holding forget data computes
                    its forget gradient, keeps the top ``salun-mask-ratio`` share
                    of weights by |g| and sends only that mask, bit-packed; the
                    server adds the masks (votes) and keeps the top share by
                    votes (fedsim/unlearning/mask.py, combine_masks); the model
                    is unchanged
    method rounds   ``unlearn-rounds`` rounds: clients holding forget data run
                    the method's local objective on (their remaining data,
                    their forget data), the others train normally on theirs
                    (gradient ascent: only the holders, who ascend their loss)
    normal rounds   the rest: plain training without the forget data

The two controls, ``fine-tune`` and ``continue``, have only method rounds:
ordinary local training (objective = their name) at the same ``unlearn-lr``,
clients drawn by the run's own selector; fine-tune's clients train on the data
they keep (the forget data removed as retrain removes them), continue's on all
their data as before the request (fedsim/data/clients.py).

``UnlearningPlan`` says which phase a round is in. ``HolderSelector`` wraps the
run's selector: in a gradient-ascent or saliency round it picks exactly the
holders; in the method rounds of a client-level request it adds the
requesting clients to the usual draw (they may have no data left to train on
normally, which would otherwise exclude them). ``Unlearning`` tells clients
the phase in each TRAIN config, turns the saliency replies into the mask,
sends the mask (bit-packed, so it costs 1 bit per weight on the downlink) and
enforces it on the aggregate: theta <- theta_sent + m * (theta_agg - theta_sent).

The mask round never sees a gradient: a dense forget gradient is what gradient
inversion reconstructs images from. With several holders the server learns only
the vote per weight, which is also all that secure aggregation of the masks would
reveal. Ties in votes at the cut are broken by a permutation drawn from
(seed, "salun-mask"), the same in every run of that seed.

Weighting in the method rounds. A reply's ``num-examples`` counts the kept
examples its update learned from (fedsim/unlearning/local.py), so the data being
deleted never buy weight. A reply with 0 is a forget-only update; with sample
weighting FedAvg gives it no weight, and this wrapper adds it as one client of an
equal-weight round would count:

    theta <- FedAvg_{replies with n > 0}(theta_i) + sum_{forget-only h} (theta_h - theta_sent) / |replies|

(no reply with n > 0: theta_sent + the mean of the forget-only deltas, i.e. the
plain mean of their models). With ``weighting = uniform`` FedAvg already gives
every reply 1 / |replies|, which is the same share, and nothing is added. Per method:

    erasediff, msgm  a holder that keeps data reports n_retain (its update mixes
                     the kept loss with the forget term); a client of a client-level
                     request keeps nothing, so its update is the forget objective
                     alone and enters as a forget-only update
    salun            the same, plus the mask on every update and on the aggregate;
                     the mask round's replies (masks, n = 0) are not aggregated
    gradient-ascent  every reply is an ascent on forget data (n = 0): the holders'
                     ascended models, averaged with equal weights (each ascends
                     within the same radius of w_ref, whatever its forget count),
                     become the global model
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.records.round_log import RoundLog
from fedsim.records.wire import array_view, numpy_array
from fedsim.rng import derive
from fedsim.unlearning.mask import combine_masks, pack_mask, unpack_each
from strategies.client_registry import ClientInfo
from strategies.selection.selectors import Selector
from strategies.unlearning.reference_share import share_config
from strategies.wrappers.base import StrategyWrapper

HOLDERS_ONLY = ("saliency", "gradient-ascent")


@dataclass(frozen=True)
class UnlearningPlan:
    method: str  # gradient-ascent | erasediff | salun | msgm | fine-tune | continue
    rounds: int  # rounds running the method's objective
    client_level: bool  # the request names clients (they must take part)

    def phase(self, server_round: int) -> str:
        """"saliency", the method's name, or "train"."""
        r = server_round
        if self.method == "salun":
            if r == 1:
                return "saliency"
            r -= 1
        return self.method if r <= self.rounds else "train"


class HolderSelector(Selector):
    """Wraps the run's selector with who must take part in unlearning rounds."""
    checkpointed = ("base",)

    def __init__(self, base: Selector, plan: UnlearningPlan) -> None:
        self.base, self.plan = base, plan
        self.name = f"{base.name}+holders"
        self.needs_contributions = base.needs_contributions

    def probabilities(self, server_round, candidates):
        """The base selector's weights over clients with data to train on, 0 for the others."""
        able = [i for i, c in enumerate(candidates) if c.num_examples > 0]
        p = np.zeros(len(candidates))
        if able:
            p[able] = self.base.probabilities(server_round, [candidates[i] for i in able])
        return p

    def eligible(self, server_round: int, client: ClientInfo) -> bool:
        if self.plan.phase(server_round) != "train":
            return client.num_examples > 0 or client.num_forget > 0
        return self.base.eligible(server_round, client)

    def select(self, server_round: int, candidates: Sequence[ClientInfo], k: int,
               rng: np.random.Generator) -> list[ClientInfo]:
        phase = self.plan.phase(server_round)
        holders = [c for c in candidates if c.num_forget > 0]
        if phase in HOLDERS_ONLY:
            return holders
        forced = holders if phase != "train" and self.plan.client_level else []
        rest = [c for c in candidates if c not in forced and c.num_examples > 0]
        drawn = self.base.select(server_round, rest, max(k - len(forced), 0), rng) if rest and k > len(forced) else []
        return sorted([*forced, *drawn], key=lambda c: c.partition_id)

    def selected(self, server_round, chosen):
        self.base.selected(server_round, chosen)

    def observe(self, server_round, contributions):
        self.base.observe(server_round, contributions)


class Unlearning(StrategyWrapper):
    """inner: a strategy with FedAvg's validation and aggregation (strategies.fedavg.FedAvg),
    possibly wrapped (the ledger); it sees dense replies (this sits inside any decoder)."""
    checkpointed = ("mask",)  # SalUn's combined mask, made in the saliency round

    def __init__(self, inner: Strategy, plan: UnlearningPlan, *, mask_ratio: float, lr: float = 0.0,
                 weighting: str = "samples", seed: int = 0, log_book: RoundLog | None = None,
                 reference_shares: dict[int, float] | None = None) -> None:
        """lr: learning rate sent in the method's rounds (0: the run's); weighting: the
        inner FedAvg's (samples | uniform); seed: the run's (ties of the combined mask);
        reference_shares: gradient ascent's a_k per requesting client
        (strategies/unlearning/reference_share.py), sent in its round."""
        super().__init__(inner)
        self.plan, self.mask_ratio, self.lr = plan, mask_ratio, lr
        self.weighting, self.seed = weighting, seed
        self.reference_shares = reference_shares or {}
        self.log_book = log_book or RoundLog()
        self.mask: dict[str, np.ndarray] | None = None
        self._sent: ArrayRecord | None = None
        self._alone: list[tuple[int, Message]] = []  # the round's forget-only replies (observed)
        self._aggregated = 0  # replies the inner strategy aggregated in the round
        inner.observers.append(self)

    @property
    def metric_columns(self) -> list[str]:
        return [*getattr(self.inner, "metric_columns", []), "phase", "clients_forgetting", "clients_forget_only"]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        phase = self.plan.phase(server_round)
        config = ConfigRecord(dict(config))  # Flower passes one record every round: a phase's keys must not leak
        config["objective"] = phase
        if phase not in ("train", "saliency") and self.lr > 0:
            config["lr"] = self.lr
        if phase == "salun" and self.mask is not None:
            config["salun-mask"] = pack_mask(self.mask, list(self.mask))
        if phase == "gradient-ascent" and self.reference_shares:
            config.update(share_config(self.reference_shares))
        self._sent, self._alone = arrays, []
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        holders = {c.node_id for c in self.clients.values() if c.num_forget > 0}
        self.log_book.record(server_round, phase=phase,
                             clients_forgetting=sum(m.metadata.dst_node_id in holders for m in messages))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        phase = self.plan.phase(server_round)
        if phase == "saliency":
            return self._saliency(server_round, list(replies))
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if phase != "train" and arrays is not None:
            arrays = self._with_forget_only(server_round, arrays)
        if phase == "salun" and self.mask is not None and arrays is not None:
            arrays = self._masked(arrays)
        return arrays, metrics

    def observe(self, server_round: int, reply: Message, keys: frozenset) -> None:
        """Keep a forget-only reply (weight 0 in FedAvg's sums) until the round's end."""
        if float(reply.content["metrics"]["num-examples"]) == 0:
            info = self.clients.get(reply.metadata.src_node_id)  # as FedAvg names partitions
            self._alone.append((info.partition_id if info else reply.metadata.src_node_id, reply))

    def aggregated(self, server_round: int, keys: frozenset | None, partitions: list[int]) -> None:
        self._aggregated = len(partitions)
        kept = set(partitions)
        self._alone = [(p, r) for p, r in self._alone if p in kept]

    def _with_forget_only(self, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        """Add the forget-only replies' deltas, each with the share 1 / |replies| (see above)."""
        alone, self._alone = [r for _, r in self._alone], []  # validated by FedAvg
        self.log_book.record(server_round, clients_forget_only=len(alone))
        if not alone or self.weighting == "uniform":
            return arrays
        share = 1.0 / self._aggregated
        out = {}
        for key in arrays.keys():
            agg = array_view(arrays[key])
            if np.issubdtype(agg.dtype, np.floating):
                sent = array_view(self._sent[key]).astype(np.float64)
                agg = (agg + sum(share * (array_view(r.content["arrays"][key]) - sent) for r in alone)
                       ).astype(agg.dtype)
            out[key] = numpy_array(agg)
        return ArrayRecord(out, keep_input=True)

    def _saliency(self, server_round: int, replies: list[Message]) -> tuple[ArrayRecord, MetricRecord]:
        """Combine the holders' masks: votes, then the top share (mask.combine_masks)."""
        shapes = {k: tuple(self._sent[k].shape) for k in self._sent.keys()}
        masks = []
        for reply in replies:
            mask = self._mask_of(server_round, reply, shapes)
            if mask is not None:
                masks.append(mask)
        if not masks:
            raise RuntimeError("salun: no client holding forget data sent a saliency mask")
        self.mask = combine_masks(masks, self.mask_ratio, derive(self.seed, "salun-mask"))
        kept = sum(int(m.sum()) for m in self.mask.values()) / sum(m.size for m in self.mask.values())
        self.log_book.record(server_round, clients_sampled=len(replies))
        return self._sent, MetricRecord({"saliency-replies": len(masks), "mask-share": kept})

    @staticmethod
    def _mask_of(server_round: int, reply: Message, shapes: dict[str, tuple[int, ...]]
                 ) -> dict[str, np.ndarray] | None:
        """The reply's mask in the model's key order, or None (logged) if it is an error or not a packed mask."""
        if reply.has_error():
            problem = f"client error: {reply.error.reason}"
        else:
            content = reply.content
            meta = content["meta"] if "meta" in content.config_records else {}
            if str(meta.get("payload", "")) != "mask" or "arrays" not in content.array_records:
                problem = "not a mask (payload must be 'mask')"
            else:
                try:
                    mask = unpack_each({k: array_view(v) for k, v in content["arrays"].items()}, shapes)
                    return {k: mask[k] for k in shapes if k in mask}  # the model's order, however it travelled
                except ValueError as err:
                    problem = str(err)
        log(WARNING, "round %d: saliency reply from node %d not used: %s",
            server_round, reply.metadata.src_node_id, problem)
        return None

    def _masked(self, arrays: ArrayRecord) -> ArrayRecord:
        out = {}
        for key in arrays.keys():
            new = array_view(arrays[key])
            if key in self.mask:
                old = array_view(self._sent[key])
                new = np.where(self.mask[key], new, old).astype(new.dtype)
            out[key] = numpy_array(new)
        return ArrayRecord(out, keep_input=True)
