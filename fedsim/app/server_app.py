"""ServerApp: discover clients, build the strategy by name, run Flower's round
loop, evaluate the global model each round, write the run folder."""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result

from fedsim.app import actor_restart
from fedsim.app.delivery_index import index_deliveries
from fedsim.app.run_state import RunState
from fedsim.app.windowed_grid import WindowedGrid, in_simulation
from fedsim.config import load_config
from fedsim.evaluation.server import ServerEvaluator
from fedsim.models.networks import save_model
from fedsim.models.train import SHUFFLE
from fedsim.records.round_log import RoundLog
from fedsim.records.run_folder import RunFolder
from fedsim.records.wire import load_record, to_array_record, to_state_dict
from strategies import build_strategy
from strategies.client_registry import check_classes, discover_clients
from strategies.wrappers.client_state import KeepClientState
from strategies.wrappers.resumed import Resumed

app = ServerApp()
actor_restart.install()  # a killed simulation worker is replaced (actor_restart.py)
SIMULATION_WINDOW = 16  # messages in flight in simulation (see windowed_grid.py)
# Discovery's queries cost the actors little, so the engine's delivery sweep (one message per node
# every 0.1 s) limits them: a wider window than training's. All at once, the sweep would scan every
# stored message for every node (10,000 registered clients: 162 s of start-up; windowed: 33 s).
DISCOVERY_WINDOW = 64  # 10,000 clients: 33 s (256: 42 s, 1024: 78 s; the sweep scans every in-flight message per node)
DEPLOYED_PULL_S = 0.5  # how often a deployed server asks the SuperLink for replies (Flower's own grid: 3 s)


def default_out_dir() -> str:
    return str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))


def log_to_file(path: Path) -> None:
    """Flower's server-side log (strategy, sampling, failures) into the run folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("flwr").addHandler(handler)


def train_config(cfg) -> ConfigRecord:
    """Local hyper-parameters travel with every TRAIN message (server-driven) and the client
    trains with them, so a recorded observation holds what the client did: lr, local epochs,
    batch size, optimizer, momentum, grad clip, and the shuffle policy (train_local's
    per-epoch reshuffle; the permutations themselves come from the client's generator)."""
    return ConfigRecord({"lr": cfg.lr, "local-epochs": cfg.local_epochs, "batch-size": cfg.batch_size,
                         "optimizer": cfg.optimizer, "momentum": cfg.momentum, "grad-clip": cfg.grad_clip,
                         "shuffle": SHUFFLE})


class RoundRecorder:
    """``evaluate_fn`` for ``Strategy.start``: evaluates, then writes the round's row."""

    def __init__(self, folder: RunFolder, evaluator: ServerEvaluator, log: RoundLog, rounds: int):
        self.folder, self.evaluator, self.log, self.rounds = folder, evaluator, log, rounds
        self.t_round = time.perf_counter()
        self.initial: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.offset = 0  # rounds already run before a resume: Flower's round k is the run's k + offset
        self.state: RunState | None = None  # checkpoints after the rounds it says are due

    def __call__(self, rnd: int, arrays: ArrayRecord) -> MetricRecord | None:
        if self.offset and rnd == 0:  # resumed: round 0 was scored in the first part of the run
            self.t_round = time.perf_counter()
            return None
        rnd += self.offset
        t_eval = time.perf_counter()
        scores = self.evaluator(rnd, to_state_dict(arrays))
        scores["eval_s"] = time.perf_counter() - t_eval
        if rnd == 0:
            self.initial = scores
            self.t_round = time.perf_counter()
        else:
            row = {"round": rnd, **self.log.get(rnd), **scores,
                   "wall_s": time.perf_counter() - self.t_round}
            self.folder.append_row(row)
            self.t_round = time.perf_counter()  # the checkpoint below counts in the next round's wall_s
            self.last = row
            if self.state is not None and self.state.due(rnd):
                self.state.save(rnd, arrays)
            self.folder.status("running", round=rnd, rounds=self.rounds, last=row)
        return MetricRecord({k: v for k, v in scores.items() if isinstance(v, float)})


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = load_config(context.run_config)
    folder = RunFolder(cfg.out_dir or default_out_dir())
    cfg = cfg.replace(out_dir=str(folder.path))  # every layer writes into this run folder
    log_to_file(folder.path / "logs" / "server.log")
    folder.status("starting", rounds=cfg.rounds)
    try:
        run(grid, cfg, folder)
    except BaseException as err:
        folder.status("failed", error=f"{type(err).__name__}: {err}", trace=traceback.format_exc())
        raise


def run(grid: Grid, cfg, folder: RunFolder) -> None:
    simulated = in_simulation(grid)
    if simulated:
        index_deliveries(grid.state)  # the engine's delivery sweep asks only nodes with a message waiting
    pull = 0.02 if simulated else DEPLOYED_PULL_S
    discovery = WindowedGrid(grid, cfg.max_in_flight or (DISCOVERY_WINDOW if simulated else None), pull)
    clients = discover_clients(discovery)  # RuntimeError if none answers
    log = RoundLog()
    evaluator = ServerEvaluator(cfg, folder.path)
    check_classes(clients, evaluator.test.num_classes)
    strategy = build_strategy(cfg, clients, log, utility=lambda arrays: evaluator.utility(to_state_dict(arrays)),
                              secrets_root=folder.path.resolve() if simulated else None)
    recorder = RoundRecorder(folder, evaluator, log, cfg.rounds)
    state = RunState(folder, cfg, strategy, evaluator, recorder)
    if cfg.checkpoint_every and simulated:  # the clients' context state, for a resume (simulation only)
        strategy = KeepClientState(strategy, state.client_dir, state.oldest_kept)
    recorder.state = state if cfg.checkpoint_every else None
    window = cfg.max_in_flight or (SIMULATION_WINDOW if simulated else None)  # deployed: all at once
    grid = WindowedGrid(grid, window, pull)  # replies stream
    columns = evaluator.quality_columns + list(getattr(strategy, "metric_columns", []))
    initial, done = to_array_record(evaluator.model.state_dict()), 0
    if cfg.resume:
        done, initial = state.restore(warn=lambda line: logging.getLogger("flwr").warning(line))
        folder.continue_metrics(columns)
        recorder.offset = done
        strategy = Resumed(strategy, done)
    else:
        folder.start_metrics(columns)
    result = Result(arrays=initial)
    if done < cfg.rounds:
        result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=cfg.rounds - done,
                                timeout=cfg.round_timeout, train_config=train_config(cfg),
                                evaluate_fn=recorder)
    if folder.nothing_aggregated():
        raise RuntimeError(f"every client failed in every round: nothing was trained; the clients' errors are in "
                           f"{folder.path / 'logs'}")
    if evaluator.ema is not None:  # the model evaluated and sampled from: the EMA of the global models
        evaluator.ema.copy_to(evaluator.model.parameters())
        save_model(evaluator.model.cpu(), folder.path / "model-ema")
    if len(result.arrays):
        load_record(evaluator.model, result.arrays)
    save_model(evaluator.model.cpu(), folder.path / "model")
    from fedsim.records.plots import plot_curves, plot_selection  # pandas + matplotlib: ~1.5 s, once, at the end

    plot_curves(folder.metrics_path, folder.path / "curves.png")
    plot_selection(folder.metrics_path, folder.path / "selection.png")
    folder.status("done", round=cfg.rounds, rounds=cfg.rounds, clients=len(clients),
                  initial=recorder.initial, last=recorder.last)
