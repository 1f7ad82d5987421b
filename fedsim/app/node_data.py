"""Which data a ClientApp trains on, and under which client id, from Flower's node config.

Node-config keys (``flower-supernode --node-config '...'``; string values in double quotes):

- ``data-dir="DIR"``: this SuperNode's own data, in the format of the run's ``dataset``
  (see data.load_local). The run's unlearning request applies to it: forget-clients
  names client ids, forget-class a label.
- ``client-id=K`` (optional, with data-dir): the client's number in logs, in metrics.csv's
  ``selected`` column and in the ledger; default: the node id Flower gave the SuperNode.
- ``partition-id=K`` [``num-partitions=N``]: partition K of the run's dataset, as the
  simulation engine sets it (and demos of several SuperNodes on one machine); N, when
  given, overrides the run's num-clients.

A node config with neither data-dir nor partition-id is refused with one line.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedsim.config import RunConfig, load_config
from fedsim.data.clients import apply_request, as_held
from fedsim.data.datasets import DataError, load_local
from fedsim.models.workspace import Workspace, build_workspace, workspace

if TYPE_CHECKING:  # only its node_id, node_config and run_config are read
    from flwr.app import Context

NO_DATA = ("this SuperNode's node config has neither data-dir=<directory of its own data> nor "
           "partition-id=<k> [num-partitions=<n>]; start it with --node-config 'data-dir=\"/path/to/data\"'")


class NodeDataError(DataError):
    """The node config does not say which data this node holds; one line."""


def _int(context: Context, key: str) -> int:
    value = context.node_config[key]
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise NodeDataError(f"node config {key} must be a whole number >= 0, got {value!r}")
    return int(value)


@functools.lru_cache(maxsize=8)
def _config(items: tuple, num_partitions: int | None) -> RunConfig:
    """The run config; with ``flwr run .`` the federation size comes from
    Flower's node config (num-partitions), which then overrides num-clients."""
    cfg = load_config(dict(items))
    if num_partitions and num_partitions != cfg.num_clients:
        cfg = cfg.replace(num_clients=num_partitions,
                          clients_per_round=min(cfg.clients_per_round, num_partitions))
    return cfg


def client_id(context: Context) -> int:
    """partition-id if set, else client-id, else the node id."""
    for key in ("partition-id", "client-id"):
        if key in context.node_config:
            return _int(context, key)
    return int(context.node_id)


def node_workspace(context: Context) -> tuple[RunConfig, Workspace, int]:
    """(run config, workspace, client id) of this node; raises NodeDataError (one line)."""
    node = context.node_config
    items = tuple(sorted(context.run_config.items()))
    if "data-dir" in node:
        if "partition-id" in node:
            raise NodeDataError("node config has both data-dir and partition-id; give data-dir (own data) "
                                "or partition-id (a partition of the run's dataset), not both")
        cfg, cid = _config(items, None), client_id(context)
        root = Path(str(node["data-dir"])).expanduser().resolve()
        return cfg, _local_workspace(cfg, str(root), cid), cid
    if "partition-id" not in node:
        raise NodeDataError(NO_DATA)
    cfg = _config(items, _int(context, "num-partitions") if "num-partitions" in node else None)
    pid = client_id(context)
    if pid >= cfg.num_clients:
        raise NodeDataError(f"partition-id={pid} is outside 0..{cfg.num_clients - 1} "
                            f"(num-clients / num-partitions = {cfg.num_clients})")
    return cfg, workspace(cfg), pid


@functools.lru_cache(maxsize=2)
def _local_workspace(cfg: RunConfig, root: str, cid: int) -> Workspace:
    """All of ``root``'s data as client ``cid``'s one partition, the run's request (and backdoor) applied."""
    train = load_local(cfg.dataset, root, cfg.image_size)
    everything = np.arange(len(train), dtype=np.int64)
    kept, forgotten = apply_request(cfg, train.labels, cid, everything)
    return build_workspace(cfg, as_held(cfg, train, {cid: everything}), {cid: kept}, {cid: forgotten})
