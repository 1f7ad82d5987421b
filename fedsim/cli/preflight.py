"""Check a run config before anything starts: config, dataset, partition, model, strategy.

Run as ``python -m fedsim.cli.preflight < config.toml`` by the CLI, in a child
process, so the long-lived CLI that only watches progress never imports torch
(about 450 MB less in the run's process tree). Exit code 2 with one line on
stderr for anything the user can fix.
"""

from __future__ import annotations

import sys
import tomllib

from pathlib import Path

from fedsim.config import ConfigError, RunConfig, load_config, parse_ids


def check(cfg: RunConfig) -> None:
    from fedsim.data.clients import KEEPS_FORGET_DATA, dataset, split_request
    from fedsim.models.workspace import fresh_model
    from strategies import STRATEGIES
    from strategies.rules import check_rule

    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{cfg.strategy}'; known: {', '.join(STRATEGIES)}")
    check_rule(cfg)
    train = dataset(cfg, "train")
    dataset(cfg, "test")
    gone = sorted(i for i in parse_ids(cfg.forget_clients, "forget-clients") or set() if i >= cfg.num_clients)
    if gone:
        raise ConfigError(f"forget-clients {gone} are not partition ids (0..{cfg.num_clients - 1})")
    if cfg.forget_class >= train.num_classes:
        raise ConfigError(f"forget-class {cfg.forget_class} is not a class of '{cfg.dataset}' "
                          f"(0..{train.num_classes - 1})")
    parts, forgotten = split_request(cfg, train.labels)
    if not any(len(p) for p in parts):
        raise ConfigError("no client holds any data once the forget request is applied")
    if cfg.unlearn_method in KEEPS_FORGET_DATA:  # trains on everything; the request is what it is scored on
        forgotten = split_request(cfg.replace(unlearn_method=""), train.labels)[1]
    if cfg.unlearn_method and not any(len(f) for f in forgotten):
        raise ConfigError("the forget request names no data that any client holds")
    if cfg.unlearn_method == "erasediff" and cfg.erasediff_target == "random-label" and not cfg.conditional:
        raise ConfigError("erasediff-target = random-label needs a class-conditional model (conditional = true)")
    if cfg.unlearn_method == "federaser" and cfg.mode != "fedavg":
        raise ConfigError("federaser replays weight updates: mode must be fedavg")
    if cfg.unlearn_method == "federaser" and not cfg.unlearn_from:
        raise ConfigError("federaser needs unlearn-from: the original run folder with a ledger")
    if cfg.replay:
        from fedsim.records.ledger import load_ledger

        try:
            ledger = load_ledger(Path(cfg.replay))
        except FileNotFoundError as err:
            raise ConfigError(f"replay: {err}") from None
        if cfg.rounds > len(ledger.rounds):
            raise ConfigError(f"rounds = {cfg.rounds}, but the replayed run's ledger lists "
                              f"{len(ledger.rounds)} rounds")
    fresh_model(cfg, train)
    if cfg.selector == "fedemd":  # its distances need the declared histograms (e.g. class 9 for scipy-values)
        from fedsim.data.partition import label_histograms
        from strategies import build_selector
        from strategies.client_registry import ClientInfo

        hists = label_histograms(train.labels, parts, train.num_classes)
        build_selector(cfg, {i: ClientInfo(i, i, len(p), h) for i, (p, h) in enumerate(zip(parts, hists))})
    if cfg.inception_weights:
        from fedsim.evaluation.inception import load_inception

        load_inception(cfg.inception_weights)


def main() -> int:
    from fedsim.data.datasets import DataError
    from fedsim.data.partition import PartitionError
    from fedsim.evaluation.inception import InceptionError
    from fedsim.models.networks import ModelError

    try:
        check(load_config(tomllib.loads(sys.stdin.read())))
    except (ConfigError, DataError, PartitionError, ModelError, InceptionError) as err:
        print(f"fedsim: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
