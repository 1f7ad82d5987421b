"""Check a run config before anything starts: config, dataset, partition, model, strategy.

Run as ``python -m fedsim.preflight < config.toml`` by the CLI, in a child
process, so the long-lived CLI that only watches progress never imports torch
(about 450 MB less in the run's process tree). Exit code 2 with one line on
stderr for anything the user can fix.
"""

from __future__ import annotations

import sys
import tomllib

from fedsim.config import ConfigError, RunConfig, load_config


def check(cfg: RunConfig) -> None:
    from fedsim.workspace import client_partition, dataset, fresh_model
    from strategies import STRATEGIES

    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{cfg.strategy}'; known: {', '.join(STRATEGIES)}")
    train = dataset(cfg, "train")
    dataset(cfg, "test")
    parts = client_partition(cfg, train.labels)
    fresh_model(cfg, train)
    if cfg.selector == "fedemd":  # its distances need the declared histograms (e.g. class 9 for scipy-values)
        from fedsim.partition import label_histograms
        from strategies import build_selector
        from strategies.client_registry import ClientInfo

        hists = label_histograms(train.labels, parts, train.num_classes)
        build_selector(cfg, {i: ClientInfo(i, i, len(p), h) for i, (p, h) in enumerate(zip(parts, hists))})
    if cfg.inception_weights:
        from fedsim.inception import load_inception

        load_inception(cfg.inception_weights)


def main() -> int:
    from fedsim.data import DataError
    from fedsim.inception import InceptionError
    from fedsim.model import ModelError
    from fedsim.partition import PartitionError

    try:
        check(load_config(tomllib.loads(sys.stdin.read())))
    except (ConfigError, DataError, PartitionError, ModelError, InceptionError) as err:
        print(f"fedsim: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
