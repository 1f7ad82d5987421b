"""Server strategies, picked by name from STRATEGIES.

``build_strategy`` stacks the layers: the named strategy (selection +
aggregation) innermost, then wrappers, with byte metering outermost so it
measures what really travels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedsim.config import ConfigError, RunConfig, codec_settings, parse_counts, parse_ids
from fedsim.ledger import LedgerWriter, load_ledger
from fedsim.partition import maverick_ids
from fedsim.round_log import RoundLog
from strategies.client_registry import ClientInfo
from strategies.compression import Compressed
from strategies.fedavg import FedAvg
from strategies.ledger import Ledgered
from strategies.metered import Metered
from strategies.recording import Recording
from strategies.sampling import Schedule
from strategies.selection import FedEMDSelector, RandomSelector, ReplaySelector, Selector
from strategies.shapley import ShapleySelector

Utility = Callable[[ArrayRecord], float]
StrategyFactory = Callable[[RunConfig, dict[int, ClientInfo], RoundLog, Utility | None], Strategy]


def build_selector(cfg: RunConfig, clients: dict[int, ClientInfo]) -> Selector:
    """The ``selector`` of the config, over the clients that declared themselves
    (``replay``: the schedule of that run's ledger, whatever the selector)."""
    if cfg.replay:
        try:
            ledger = load_ledger(Path(cfg.replay))
        except FileNotFoundError as err:
            raise ConfigError(f"replay: {err}") from None
        return ReplaySelector({r["round"]: set(r["participants"]) for r in ledger.rounds})
    if cfg.selector == "fedemd":
        infos = sorted(clients.values(), key=lambda c: c.partition_id)
        try:
            return FedEMDSelector(infos, alpha=cfg.fedemd_alpha, beta=cfg.fedemd_beta,
                                  distance=cfg.fedemd_distance,
                                  cum_init=parse_counts(cfg.fedemd_cum_init, "fedemd-cum-init"))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if cfg.selector == "shapley":
        return ShapleySelector(decay=cfg.shapley_decay, temperature=cfg.shapley_temperature, seed=cfg.seed)
    return RandomSelector()


def _fedavg(cfg: RunConfig, clients: dict[int, ClientInfo], log: RoundLog,
            utility: Utility | None = None) -> Strategy:
    return FedAvg(clients, cfg.clients_per_round, seed=cfg.seed, log_book=log,
                  mode=cfg.mode, server_lr=cfg.server_lr, selector=build_selector(cfg, clients),
                  weighting=cfg.weighting, utility=utility,
                  mavericks=maverick_ids(cfg.partition, cfg.num_clients),
                  schedule=Schedule(cfg.sampling, cfg.clients_per_round, cfg.sampling_decay,
                                    min(cfg.sampling_min, cfg.clients_per_round)))


STRATEGIES: dict[str, StrategyFactory] = {"fedavg": _fedavg}


def build_strategy(cfg: RunConfig, clients: dict[int, ClientInfo], log: RoundLog,
                   utility: Utility | None = None) -> Strategy:
    """Metered(Recording?(Compressed?(Ledgered?(named strategy)))): bytes are measured
    and observations recorded on what arrives, before any inner layer decodes it;
    the ledger sees the dense updates that were aggregated.
    utility: score of global weights (the server's evaluation), for valuing selectors."""
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{cfg.strategy}'; known: {', '.join(STRATEGIES)}")
    strategy = STRATEGIES[cfg.strategy](cfg, clients, log, utility)
    if cfg.out_dir:  # the ledger for unlearning lives in the run folder
        strategy = Ledgered(strategy, LedgerWriter(Path(cfg.out_dir), seed=cfg.seed, every=cfg.ledger_every,
                                                   max_bytes=cfg.ledger_max_mb * 1e6), clients)
    settings = codec_settings(cfg.to_flwr())
    if cfg.compression != "none":
        strategy = Compressed(strategy, settings, seed=cfg.seed, log_book=log, downlink=cfg.compress_downlink)
    partitions = parse_ids(cfg.record_clients)
    if partitions is None or partitions:
        strategy = Recording(strategy, Path(cfg.out_dir or "."), clients, partitions=partitions,
                             rounds=parse_ids(cfg.record_rounds), codec_settings=settings)
    return Metered(strategy, log)
