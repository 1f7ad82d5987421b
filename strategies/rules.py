"""Flower's aggregation rules by name, with their hyper-parameters from the run config.

Each rule is Flower's own class (``flwr.serverapp.strategy``), built here and worn by fedsim's
server layer (strategies/ruled.py), which keeps selection, validation, ordering, FedSGD and
logging. A rule is one of three kinds, by what it needs of a round:

- ``mean``: the sample-weighted mean, folded as replies stream in (FedAvg; FedProx, whose
  difference is the proximal term it sends to the clients as ``proximal-mu``).
- ``optimizer``: the mean, then the rule's server optimiser step on it (FedAvgM, FedAdam, FedYogi,
  FedAdagrad): the rule gets the folded mean as its one reply, so the replies still stream and
  the optimiser's state (momentum, moments) lives in the rule object, checkpointed with the run.
- ``replies``: the rule reads every valid reply of the round (FedMedian, FedTrimmedAvg, Krum,
  MultiKrum, Bulyan, QFedAvg): the round holds them (memory grows with the clients per round).

``server-lr`` is the server's step size whatever the rule: FedSGD's step (w - lr * gradient),
FedAvgM's server learning rate, FedOpt's eta; 0 takes the rule's default (``DEFAULT_SERVER_LR``).
In FedSGD mode an optimizer rule steps on the mean gradient itself (its pseudo-gradient is the
gradient), so Adam on gradients is FedAdam with ``server-lr`` as its eta.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from flwr.serverapp import strategy as fl

from fedsim.config import ConfigError, RunConfig


class Rule(NamedTuple):
    kind: str  # mean | optimizer | replies
    build: Callable[[RunConfig, dict[str, Any]], fl.Strategy]  # (config, Flower's common kwargs) -> the rule


def _n(cfg: RunConfig) -> int:
    """The fewest replies a round may aggregate: the clients drawn at the schedule's smallest."""
    return cfg.clients_per_round if cfg.sampling == "constant" else min(cfg.clients_per_round, cfg.sampling_min)


DEFAULT_SERVER_LR = {"fedavgm": 1.0, "fedadam": 0.1, "fedyogi": 0.1, "fedadagrad": 0.1}  # Flower's; others 1.0

RULES: dict[str, Rule] = {
    "fedprox": Rule("mean", lambda c, kw: fl.FedProx(proximal_mu=c.proximal_mu, **kw)),
    "fedavgm": Rule("optimizer", lambda c, kw: fl.FedAvgM(server_learning_rate=server_lr(c),
                                                          server_momentum=c.server_momentum, **kw)),
    "fedadam": Rule("optimizer", lambda c, kw: fl.FedAdam(eta=server_lr(c), eta_l=c.lr, beta_1=c.beta_1,
                                                          beta_2=c.beta_2, tau=c.tau, **kw)),
    "fedyogi": Rule("optimizer", lambda c, kw: fl.FedYogi(eta=server_lr(c), eta_l=c.lr, beta_1=c.beta_1,
                                                          beta_2=c.beta_2, tau=c.tau, **kw)),
    "fedadagrad": Rule("optimizer", lambda c, kw: fl.FedAdagrad(eta=server_lr(c), eta_l=c.lr, tau=c.tau, **kw)),
    "fedmedian": Rule("replies", lambda c, kw: fl.FedMedian(**kw)),
    "trimmed-mean": Rule("replies", lambda c, kw: fl.FedTrimmedAvg(beta=c.trim_beta, **kw)),
    "krum": Rule("replies", lambda c, kw: fl.Krum(num_malicious_nodes=c.num_malicious, **kw)),
    "multikrum": Rule("replies", lambda c, kw: fl.MultiKrum(num_malicious_nodes=c.num_malicious,
                                                            num_nodes_to_select=multikrum_select(c), **kw)),
    "bulyan": Rule("replies", lambda c, kw: fl.Bulyan(num_malicious_nodes=c.num_malicious, **kw)),
    "qfedavg": Rule("replies", lambda c, kw: fl.QFedAvg(client_learning_rate=c.lr, q=c.qffl_q,
                                                        train_loss_key="train-loss", **kw)),
}


def server_lr(cfg: RunConfig) -> float:
    return cfg.server_lr if cfg.server_lr > 0 else DEFAULT_SERVER_LR.get(cfg.strategy, 1.0)


def multikrum_select(cfg: RunConfig) -> int:
    return cfg.multikrum_select or max(_n(cfg) - cfg.num_malicious, 1)


def build_rule(cfg: RunConfig) -> tuple[str, fl.Strategy]:
    """(kind, Flower's strategy) of ``cfg.strategy``; it samples every node the grid offers it
    (fedsim's layer offers the ones it selected) and evaluates none."""
    check_rule(cfg)
    kw = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": 1, "min_evaluate_nodes": 0,
          "min_available_nodes": 1}
    rule = RULES[cfg.strategy]
    return rule.kind, rule.build(cfg, kw)


def check_rule(cfg: RunConfig) -> None:
    """Refuse, in one line, what the rule cannot do with this config (before anything starts)."""
    name, n, f = cfg.strategy, _n(cfg), cfg.num_malicious
    kind = RULES[name].kind if name in RULES else "mean"
    problems = [
        (name in ("fedprox", "qfedavg", "scaffold") and cfg.mode == "fedsgd",
         f"strategy {name} needs local training (mode = fedavg): its client objective or its weights' "
         "difference has no meaning for a FedSGD gradient"),
        (name == "scaffold" and bool(cfg.unlearn_method),
         "strategy scaffold: unlearning rounds run other objectives and send no control variates"),
        (kind == "replies" and bool(cfg.unlearn_method),
         f"strategy {name} aggregates the replies without their weights; unlearning rounds need the "
         "weighted mean (forget-only replies of weight 0): use fedavg, fedprox or a server optimizer"),
        (name == "krum" and n <= 2 * f + 2, f"krum needs clients per round > 2 num-malicious + 2 "
                                             f"({2 * f + 2}); the rounds draw {n}"),
        (name == "multikrum" and (n <= 2 * f + 2 or multikrum_select(cfg) > n),
         f"multikrum needs clients per round > 2 num-malicious + 2 ({2 * f + 2}) and multikrum-select <= "
         f"clients per round; the rounds draw {n}"),
        (name == "bulyan" and n < 4 * f + 3, f"bulyan needs clients per round >= 4 num-malicious + 3 "
                                              f"({4 * f + 3}); the rounds draw {n}"),
    ]
    for bad, message in problems:
        if bad:
            raise ConfigError(message)
