"""Server strategies, picked by name from STRATEGIES.

``build_strategy`` stacks the layers: the named strategy (selection +
aggregation) innermost, then wrappers, with byte metering outermost so it
measures what really travels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.serverapp.strategy import Strategy

from fedsim.config import ConfigError, RunConfig, parse_ids
from fedsim.round_log import RoundLog
from strategies.client_registry import ClientInfo
from strategies.fedavg import FedAvg
from strategies.metered import Metered
from strategies.recording import Recording

StrategyFactory = Callable[[RunConfig, dict[int, ClientInfo], RoundLog], Strategy]


def _fedavg(cfg: RunConfig, clients: dict[int, ClientInfo], log: RoundLog) -> Strategy:
    return FedAvg(clients, cfg.clients_per_round, seed=cfg.seed, log_book=log,
                  mode=cfg.mode, server_lr=cfg.server_lr)


STRATEGIES: dict[str, StrategyFactory] = {"fedavg": _fedavg}


def build_strategy(cfg: RunConfig, clients: dict[int, ClientInfo], log: RoundLog) -> Strategy:
    """Metered(Recording?(named strategy)): bytes are measured and observations
    recorded on what arrives, before any inner layer transforms it."""
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{cfg.strategy}'; known: {', '.join(STRATEGIES)}")
    strategy = STRATEGIES[cfg.strategy](cfg, clients, log)
    partitions = parse_ids(cfg.record_clients)
    if partitions is None or partitions:
        strategy = Recording(strategy, Path(cfg.out_dir or "."), clients, partitions=partitions,
                             rounds=parse_ids(cfg.record_rounds))
    return Metered(strategy, log)
