"""The benchmark's job written directly on Flower, as Flower's quickstart examples do it.

What a user would write instead of fedsim: a ClientApp that builds the model, loads the
ArrayRecord, trains with the same code (fedsim.models.train.train_local on the same
partition, with the same per-(round, client) generator) and returns
``ArrayRecord(model.state_dict())``; a ServerApp that runs Flower's own ``FedAvg``
(``fraction_train=1.0``, no federated evaluation) through ``strategy.start``; default
simulation settings with 1 CPU per client. Only the benchmark's bookkeeping is added: the
server notes the time at the end of each round (Flower's ``evaluate_fn`` hook) into
``flower_direct.json`` in the run folder, and writes the final weights (``weights.safetensors``).

    python experiments/flower_direct.py --out DIR --set num-clients=100 --set clients-per-round=100 ...

(``--set`` keys are fedsim's run config keys; used by experiments/bench_simulation.py.)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

client_app = ClientApp()
server_app = ServerApp()
RESULT = "flower_direct.json"
WEIGHTS = "weights.safetensors"


@functools.cache
def _data(items: tuple):
    """The train split and the partition, once per worker process (as a quickstart caches its dataset)."""
    from fedsim.config import load_config
    from fedsim.data.clients import client_partition, dataset

    cfg = load_config(dict(items))
    train = dataset(cfg, "train")
    return cfg, train, client_partition(cfg, train.labels)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    import torch

    from fedsim.models.train import run_task, train_local
    from fedsim.models.workspace import fresh_model
    from fedsim.rng import torch_generator

    cfg, data, parts = _data(tuple(sorted(context.run_config.items())))
    pid = int(context.node_config["partition-id"])
    model = fresh_model(cfg, data)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    task = run_task(cfg)
    idx = torch.from_numpy(parts[pid])
    rnd = int(msg.content["config"]["server-round"])
    stats = train_local(model, task, data.images[idx], torch.from_numpy(data.labels[parts[pid]]),
                        epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                        generator=torch_generator(cfg.seed, "train", rnd, pid))
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"num-examples": stats.num_examples, "train-loss": stats.loss})})
    return Message(content=content, reply_to=msg)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    from safetensors.torch import save_file

    from fedsim.config import load_config
    from fedsim.data.clients import dataset
    from fedsim.models.workspace import fresh_model

    cfg = load_config(dict(context.run_config))
    model = fresh_model(cfg, dataset(cfg, "train"))
    ends: list[float] = []

    def note_round(server_round: int, arrays: ArrayRecord) -> MetricRecord:  # also called for round 0, before training
        ends.append(time.perf_counter())
        return MetricRecord({})

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=cfg.clients_per_round)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=cfg.rounds,
                            evaluate_fn=note_round)
    rounds = [b - a for a, b in zip(ends, ends[1:])]
    save_file({k: v.contiguous() for k, v in result.arrays.to_torch_state_dict().items()},
              str(Path(cfg.out_dir, WEIGHTS)))  # to check that it did the same job as fedsim
    Path(cfg.out_dir, RESULT).write_text(json.dumps({"round_s": rounds}))


def run(out: Path, overrides: list[str]) -> list[float]:
    """Launch the app on a private local SuperLink (fedsim/cli/launch.py), wait, return its round times."""
    from fedsim.cli.launch import LocalFederation
    from fedsim.config import resolve

    cfg = resolve(None, overrides + [f"out-dir='{out.resolve()}'", "ray-object-store-mb=0"])  # Ray's default store
    out.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parents[1])  # the simulation process imports experiments.flower_direct
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    pyproject = {
        "build-system": {"requires": ["setuptools"], "build-backend": "setuptools.build_meta"},
        "project": {"name": "flower-direct", "version": "0.1.0", "dependencies": [], "license": "Apache-2.0"},
        "tool": {"flwr": {"app": {"publisher": "bench",
                                  "components": {"serverapp": "experiments.flower_direct:server_app",
                                                 "clientapp": "experiments.flower_direct:client_app"},
                                  "config": cfg.to_flwr()}}},
    }
    with LocalFederation(out, cfg, pyproject=pyproject) as fed:
        run_id = fed.submit(f"num-supernodes={cfg.num_clients} client-resources-num-cpus=1")  # Flower's defaults
        while not fed.finished(run_id):
            time.sleep(0.5)
    result = out / RESULT
    if not result.is_file():
        raise SystemExit(f"flower_direct: the run wrote no {RESULT}; see {out / 'logs'}")
    return json.loads(result.read_text())["round_s"]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(json.dumps({"round_s": run(Path(args.out), args.overrides)}))
