"""Unlearning: the server side of a deletion request, as a wrapper and a selector.

A fine-tuning unlearning run (``fedsim unlearn --method gradient-ascent |
erasediff | salun | msgm``) starts from the trained model and goes through
phases; the forget data never leave the clients that hold them:

    salun only      round 1: "saliency": the clients holding forget data send
                    the gradient of their summed forget loss; the server adds
                    them up and keeps the top ``salun-mask-ratio`` share of
                    weights by |g| (the saliency mask), the model is unchanged
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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.records.round_log import RoundLog
from fedsim.records.wire import array_view, numpy_array
from fedsim.unlearning.mask import pack_mask, top_share
from strategies.client_registry import ClientInfo
from strategies.selection.selectors import Selector
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

    def __init__(self, inner: Strategy, plan: UnlearningPlan, *, mask_ratio: float, lr: float = 0.0,
                 log_book: RoundLog | None = None) -> None:
        """lr: learning rate sent in the method's rounds (0: the run's)."""
        super().__init__(inner)
        self.plan, self.mask_ratio, self.lr = plan, mask_ratio, lr
        self.log_book = log_book or RoundLog()
        self.mask: dict[str, np.ndarray] | None = None
        self._sent: ArrayRecord | None = None

    @property
    def metric_columns(self) -> list[str]:
        return [*getattr(self.inner, "metric_columns", []), "phase", "clients_forgetting"]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        phase = self.plan.phase(server_round)
        config["objective"] = phase
        if phase not in ("train", "saliency") and self.lr > 0:
            config["lr"] = self.lr
        if phase == "salun" and self.mask is not None:
            config["salun-mask"] = pack_mask(self.mask, list(self.mask))
        self._sent = arrays
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
        if phase == "salun" and self.mask is not None and arrays is not None:
            arrays = self._masked(arrays)
        return arrays, metrics

    def _saliency(self, server_round: int, replies: list[Message]) -> tuple[ArrayRecord, MetricRecord]:
        """Sum the holders' forget gradients; the mask keeps the most salient share."""
        total: dict[str, np.ndarray] = {}
        used = 0
        for reply in replies:
            if reply.has_error() or "arrays" not in reply.content.array_records:
                continue
            for key, arr in reply.content["arrays"].items():
                g = array_view(arr).astype(np.float64)
                total[key] = total[key] + g if key in total else g
            used += 1
        if not total:
            raise RuntimeError("salun: no client holding forget data answered the saliency round")
        self.mask = top_share(total, self.mask_ratio)
        kept = sum(int(m.sum()) for m in self.mask.values()) / sum(m.size for m in self.mask.values())
        self.log_book.record(server_round, clients_sampled=len(replies))
        return self._sent, MetricRecord({"saliency-replies": used, "mask-share": kept})

    def _masked(self, arrays: ArrayRecord) -> ArrayRecord:
        out = {}
        for key in arrays.keys():
            new = array_view(arrays[key])
            if key in self.mask:
                old = array_view(self._sent[key])
                new = np.where(self.mask[key], new, old).astype(new.dtype)
            out[key] = numpy_array(new)
        return ArrayRecord(out, keep_input=True)
