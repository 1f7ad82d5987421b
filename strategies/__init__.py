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

from fedsim.compression.codecs import codec_settings
from fedsim.config import CONTROLS, ConfigError, RunConfig, parse_counts, parse_ids
from fedsim.data.malicious import malicious_ids
from fedsim.data.partition import maverick_ids
from fedsim.records.ledger import LedgerWriter, load_ledger
from fedsim.records.round_log import RoundLog
from strategies.client_registry import ClientInfo
from strategies.compression.compressed import Compressed
from strategies.compression.schedule import Schedule
from strategies.fedavg import FedAvg
from strategies.ruled import Ruled
from strategies.rules import RULES, build_rule, server_lr
from strategies.scaffold import Scaffold
from strategies.selection.selectors import FedEMDSelector, RandomSelector, ReplaySelector, Selector
from strategies.selection.shapley import ShapleySelector
from strategies.unlearning.federaser import Calibrated, calibration_rounds
from strategies.unlearning.ledger import Ledgered
from strategies.unlearning.protocol import HolderSelector, Unlearning, UnlearningPlan
from strategies.unlearning.reference_share import last_round_shares, original_weighting
from strategies.wrappers.metered import Metered
from strategies.wrappers.recording import Recording
from strategies.wrappers.secrets import AskSecrets

FINE_TUNING = ("gradient-ascent", "erasediff", "salun", "msgm")  # unlearning by local objectives

Utility = Callable[[ArrayRecord], float]
StrategyFactory = Callable[[RunConfig, dict[int, ClientInfo], RoundLog, Utility | None], Strategy]


def build_selector(cfg: RunConfig, clients: dict[int, ClientInfo]) -> Selector:
    """The ``selector`` of the config, over the clients that declared themselves
    (``replay``: the schedule of that run's ledger, whatever the selector)."""
    if cfg.unlearn_method == "federaser":  # the stored rounds' participants, one stored round per round
        ledger = _ledger(cfg.unlearn_from, "unlearn-from")
        rounds = calibration_rounds(ledger, client_level=bool(parse_ids(cfg.forget_clients)))
        return ReplaySelector({i: set(ledger.participants(t)) for i, t in enumerate(rounds, start=1)})
    if cfg.replay:
        ledger = _ledger(cfg.replay, "replay")
        return ReplaySelector({r["round"]: set(r["participants"]) for r in ledger.rounds})
    base = _named_selector(cfg, clients)
    if cfg.unlearn_method in FINE_TUNING:  # not CONTROLS: they draw as an ordinary run does
        return HolderSelector(base, unlearning_plan(cfg))
    return base


def _ledger(run_dir: str, key: str):
    try:
        return load_ledger(Path(run_dir))
    except FileNotFoundError as err:
        raise ConfigError(f"{key}: {err}") from None


def _reference_shares(cfg: RunConfig) -> dict[int, float]:
    """Gradient ascent on a client-level request: each requesting client's a_k in the original run's last round."""
    requested = parse_ids(cfg.forget_clients) or set()
    if cfg.unlearn_method != "gradient-ascent" or not requested or not cfg.unlearn_from:
        return {}
    return last_round_shares(_ledger(cfg.unlearn_from, "unlearn-from"),
                             original_weighting(cfg.unlearn_from, cfg.weighting), requested)


def unlearning_plan(cfg: RunConfig) -> UnlearningPlan:
    return UnlearningPlan(cfg.unlearn_method, cfg.unlearn_rounds, client_level=bool(parse_ids(cfg.forget_clients)))


def _named_selector(cfg: RunConfig, clients: dict[int, ClientInfo]) -> Selector:
    if cfg.selector == "fedemd":
        infos = sorted(clients.values(), key=lambda c: c.partition_id)
        try:
            return FedEMDSelector(infos, alpha=cfg.fedemd_alpha, beta=cfg.fedemd_beta,
                                  distance=cfg.fedemd_distance,
                                  cum_init=parse_counts(cfg.fedemd_cum_init, "fedemd-cum-init"))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if cfg.selector == "shapley":
        return ShapleySelector(decay=cfg.shapley_decay, temperature=cfg.shapley_temperature,
                               explore=cfg.shapley_explore, seed=cfg.seed)
    return RandomSelector()


def _layer_kwargs(cfg: RunConfig, clients: dict[int, ClientInfo], log: RoundLog, utility: Utility | None) -> dict:
    """fedsim's server layer, the same under every rule."""
    return dict(seed=cfg.seed, log_book=log, mode=cfg.mode, server_lr=server_lr(cfg),
                selector=build_selector(cfg, clients), weighting=cfg.weighting, utility=utility,
                mavericks=maverick_ids(cfg.partition, cfg.num_clients),
                malicious=malicious_ids(cfg.seed, cfg.num_clients, cfg.malicious_share),
                schedule=Schedule(cfg.sampling, cfg.clients_per_round, cfg.sampling_decay,
                                  min(cfg.sampling_min, cfg.clients_per_round)))


def _fedavg(cfg: RunConfig, clients: dict[int, ClientInfo], log: RoundLog,
            utility: Utility | None = None) -> Strategy:
    return FedAvg(clients, cfg.clients_per_round, **_layer_kwargs(cfg, clients, log, utility))


def _ruled(cfg: RunConfig, clients: dict[int, ClientInfo], log: RoundLog,
           utility: Utility | None = None) -> Strategy:
    """Flower's own rule of that name under fedsim's layer (strategies/ruled.py)."""
    kind, rule = build_rule(cfg)
    return Ruled(clients, cfg.clients_per_round, rule=rule, kind=kind, **_layer_kwargs(cfg, clients, log, utility))


def _scaffold(cfg: RunConfig, clients: dict[int, ClientInfo], log: RoundLog,
              utility: Utility | None = None) -> Strategy:
    return Scaffold(clients, cfg.clients_per_round, num_clients=cfg.num_clients, variate=cfg.scaffold_variate,
                    **_layer_kwargs(cfg, clients, log, utility))


STRATEGIES: dict[str, StrategyFactory] = {"fedavg": _fedavg, **{name: _ruled for name in RULES},
                                          "scaffold": _scaffold}


def build_strategy(cfg: RunConfig, clients: dict[int, ClientInfo], log: RoundLog,
                   utility: Utility | None = None, *, secrets_root: Path | None = None) -> Strategy:
    """AskSecrets?(Metered(Recording?(Compressed?(Unlearning|Calibrated?(Ledgered?(named strategy)))))):
    bytes are measured and observations recorded on what arrives, before any inner
    layer decodes it; unlearning protocols and the ledger see dense updates.
    utility: score of global weights (the server's evaluation), for valuing selectors.
    secrets_root: the run folder, given only in simulation: recorded clients then write what
    they trained on there (strategies/wrappers/secrets.py); None on a deployment."""
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{cfg.strategy}'; known: {', '.join(STRATEGIES)}")
    strategy = STRATEGIES[cfg.strategy](cfg, clients, log, utility)
    if cfg.out_dir:  # the ledger for unlearning lives in the run folder
        strategy = Ledgered(strategy, LedgerWriter(Path(cfg.out_dir), seed=cfg.seed, every=cfg.ledger_every,
                                                   max_bytes=cfg.ledger_max_mb * 1e6,
                                                   malicious=malicious_ids(cfg.seed, cfg.num_clients,
                                                                           cfg.malicious_share),
                                                   malicious_kind=cfg.malicious_kind), clients)
    if cfg.unlearn_method == "federaser":
        ledger = _ledger(cfg.unlearn_from, "unlearn-from")
        strategy = Calibrated(strategy, ledger,
                              calibration_rounds(ledger, client_level=bool(parse_ids(cfg.forget_clients))),
                              calibration=cfg.federaser_calibration)
    elif cfg.unlearn_method in FINE_TUNING + CONTROLS:  # controls: the same rounds at the same unlearn-lr
        strategy = Unlearning(strategy, unlearning_plan(cfg), mask_ratio=cfg.salun_mask_ratio, lr=cfg.unlearn_lr,
                              weighting=cfg.weighting, seed=cfg.seed, log_book=log,
                              reference_shares=_reference_shares(cfg))
    settings = codec_settings(cfg.to_flwr())
    if cfg.compression != "none":
        strategy = Compressed(strategy, settings, seed=cfg.seed, log_book=log, downlink=cfg.compress_downlink)
    partitions = parse_ids(cfg.record_clients)
    recording = partitions is None or bool(partitions)
    if recording:
        strategy = Recording(strategy, Path(cfg.out_dir or "."), clients, partitions=partitions,
                             rounds=parse_ids(cfg.record_rounds), codec_settings=settings)
    strategy = Metered(strategy, log)
    if recording and secrets_root is not None:  # outside the meter: not federated traffic
        strategy = AskSecrets(strategy, secrets_root, clients, partitions=partitions,
                              rounds=parse_ids(cfg.record_rounds))
    return strategy
