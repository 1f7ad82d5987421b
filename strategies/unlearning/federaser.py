"""FedEraser (Liu et al., IWQoS 2021): calibrated replay of a run's ledger.

The original run stored every client's update U_k(t_j) at rounds
t_1, t_2, ... (``ledger-every`` = Delta_t). Unlearning replays only those
rounds, each with a short calibration training of the remaining clients
(``federaser-ratio`` x local-epochs, on the data they keep):

    M~(t_1)     = M(t_1)
    M~(t_{j+1}) = M~(t_j) + sum_k N_k / sum N  U~_k(t_j)
    U~_k(t_j)   = ||U_k(t_j)|| * U^_k(t_j) / ||U^_k(t_j)||    per layer

U^_k(t_j) is client k's calibration update from M~(t_j): the old update's
magnitude with the new direction. For a client-level request the first step
needs no calibration (the forgotten client's update is simply dropped:
M~(t_2) = M~(t_1) + FedAvg_{k != k_u} U_k(t_1)) and is done by ``start_model``
before the run; for a class-level request every client's old update carries
the class, so every stored round is calibrated. ``calibration="per-layer-mean"``
calibrates the averaged update per layer instead of each client's (as the
third-party implementation does).

``Calibrated`` is the aggregation hook: the inner FedAvg validates replies,
then the wrapper replaces its mean by the calibrated sum. The selection is a
ReplaySelector over the stored rounds' participants (strategies/__init__.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.records.ledger import Ledger
from fedsim.records.wire import array_view, numpy_array
from strategies.wrappers.base import StrategyWrapper


def calibration_rounds(ledger: Ledger, client_level: bool) -> list[int]:
    """The ledger rounds whose updates are calibrated, in order."""
    stored = ledger.stored_rounds()
    return stored[1:] if client_level else stored


def start_model(ledger: Ledger, forgotten: set[int], client_level: bool) -> dict[str, torch.Tensor]:
    """M~ before the first calibrated round: M(t_1), plus for a client-level request the
    uncalibrated mean of the other clients' stored updates of t_1."""
    stored = ledger.stored_rounds()
    if not stored:
        raise ValueError("the ledger stores no client updates (train with ledger-every > 0)")
    t1 = stored[0]
    model = ledger.initial() if t1 == 1 else ledger.global_at(t1)
    if not client_level:
        return model
    counts = {p: n for p, n in ledger.participants(t1).items() if p not in forgotten}
    if not counts:
        return model
    total = sum(counts.values())
    out = {k: v.clone() for k, v in model.items()}
    for pid, n in counts.items():
        for key, u in ledger.update(t1, pid).items():
            if out[key].is_floating_point():
                out[key] += u.to(out[key].dtype) * (n / total)
    return out


def _norm(x: np.ndarray) -> float:
    return float(np.linalg.norm(x.ravel().astype(np.float64)))


def calibrate(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """||old|| * new / ||new|| (zero if the new update is zero)."""
    n = _norm(new)
    return new * (_norm(old) / n) if n > 0 else np.zeros_like(new)


class Calibrated(StrategyWrapper):
    def __init__(self, inner: Strategy, ledger: Ledger, rounds: list[int], *,
                 calibration: str = "per-client") -> None:
        """rounds: the ledger round calibrated in run round 1, 2, ..."""
        if calibration not in ("per-client", "per-layer-mean"):
            raise ValueError(f"calibration must be per-client or per-layer-mean, got {calibration!r}")
        super().__init__(inner)
        self.ledger, self.rounds, self.calibration = ledger, rounds, calibration
        self._sent: ArrayRecord | None = None
        self._sums: dict[frozenset, _Sums] = {}  # the round's, per metric-key set (as FedAvg sums)
        self._step: _Sums | None = None  # the sums of the replies FedAvg aggregated
        self._sent_views: dict[str, np.ndarray] = {}
        inner.observers.append(self)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._sent, self._sums, self._step = arrays, {}, None
        self._sent_views = {k: array_view(arrays[k]) for k in arrays.keys()}  # once per round, not per reply
        return self.inner.configure_train(server_round, arrays, config, grid)

    def observe(self, server_round: int, reply: Message, keys: frozenset) -> None:
        """Fold one aggregated client's calibrated update into the round's sums."""
        t = self.rounds[server_round - 1]
        pid = int(reply.content["meta"]["partition-id"])
        try:
            stored = {k: v.numpy() for k, v in self.ledger.update(t, pid).items()}
        except FileNotFoundError:
            log(logging.WARNING, "FedEraser: no stored update of client %d in round %d; "
                "its calibration update is used as is", pid, t)
            stored = None
        received, sent = reply.content["arrays"], self._sent_views
        new = {k: array_view(received[k]).astype(np.float64) - sent[k] for k in sent
               if np.issubdtype(sent[k].dtype, np.floating)}
        if keys not in self._sums:
            self._sums[keys] = _Sums(self.calibration)
        self._sums[keys].add(float(reply.content["metrics"]["num-examples"]), new, stored)

    def aggregated(self, server_round: int, keys: frozenset | None, partitions: list[int]) -> None:
        self._step = self._sums.get(keys)
        self._sums = {}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        sums, self._step = self._step, None
        if arrays is None or sums is None or sums.total <= 0:
            return arrays, metrics
        out = {}
        for key in self._sent.keys():
            base = array_view(self._sent[key])
            if not np.issubdtype(base.dtype, np.floating):
                out[key] = numpy_array(array_view(arrays[key]))
                continue
            out[key] = numpy_array((base.astype(np.float64) + sums.step(key)).astype(base.dtype))
        return ArrayRecord(out, keep_input=True), metrics


class _Sums:
    """One round's running sums over the aggregated clients (weights N_k, divided by sum N at
    the end): per-client, sum_k N_k U~_k; per-layer-mean, sum_k N_k U^_k and, over the
    clients with a stored update, sum_k N_k U_k and sum_k N_k."""

    def __init__(self, calibration: str) -> None:
        self.calibration = calibration
        self.total = self.total_old = 0.0
        self.new: dict[str, np.ndarray] = {}
        self.old: dict[str, np.ndarray] = {}

    def add(self, count: float, new: dict[str, np.ndarray], old: dict[str, np.ndarray] | None) -> None:
        calibration = self.calibration
        self.total += count
        for key, n in new.items():
            term = (calibrate(old[key], n) if old is not None else n) if calibration == "per-client" else n
            self.new[key] = self.new.get(key, 0.0) + count * term
            if calibration != "per-client" and old is not None:
                self.old[key] = self.old.get(key, 0.0) + count * old[key]
        if calibration != "per-client" and old is not None:
            self.total_old += count

    def step(self, key: str) -> np.ndarray:
        if self.calibration == "per-client":
            return self.new[key] / self.total
        mean_new = self.new[key] / self.total
        mean_old = self.old[key] / self.total_old if self.total_old > 0 else mean_new
        return calibrate(mean_old, mean_new)
