"""Server strategies, picked by name from STRATEGIES.

``build_strategy`` stacks the layers: the named strategy (selection +
aggregation) innermost, then wrappers, with byte metering outermost so it
measures what really travels.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.serverapp.strategy import Strategy

from fedsim.config import ConfigError, RunConfig
from fedsim.round_log import RoundLog
from strategies.client_registry import ClientInfo
from strategies.fedavg import FedAvg
from strategies.metered import Metered

StrategyFactory = Callable[[RunConfig, dict[int, ClientInfo], RoundLog], Strategy]


def _fedavg(cfg: RunConfig, clients: dict[int, ClientInfo], log: RoundLog) -> Strategy:
    return FedAvg(clients, cfg.clients_per_round, seed=cfg.seed, log_book=log,
                  mode=cfg.mode, server_lr=cfg.server_lr)


STRATEGIES: dict[str, StrategyFactory] = {"fedavg": _fedavg}


def build_strategy(cfg: RunConfig, clients: dict[int, ClientInfo], log: RoundLog) -> Strategy:
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{cfg.strategy}'; known: {', '.join(STRATEGIES)}")
    return Metered(STRATEGIES[cfg.strategy](cfg, clients, log), log)
