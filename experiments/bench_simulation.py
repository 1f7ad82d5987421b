"""Simulation overhead: fedsim (Flower + Ray) against a plain PyTorch loop and the same job on Flower directly.

For N in {10, 100, 1000} clients (IID split of the digits train set, every
client trains every round, 1 local epoch, batch 16, ddpm-small) both runners do
exactly the same local training -- same partition, same initial weights, same
per-(round, client) generators -- and the same sample-weighted FedAvg:

- ``fedsim``: ``fedsim run`` (local SuperLink, Flower simulation engine on Ray,
  one CPU per client actor). round_s = wall_s - eval_s from metrics.csv (the
  server-side held-out evaluation is left out: the plain loop does none).
- ``plain``: one Python process, sequential clients, no Flower, no Ray: the
  floor on this machine.
- ``flower-direct``: experiments/flower_direct.py, the job as Flower's quickstart
  examples write it (a ClientApp that builds the model and returns its state dict,
  Flower's own FedAvg, 1 CPU per client): what a user would write instead of fedsim.

With ``--device cuda`` both runners train on the GPU: the plain loop moves its model there,
fedsim's clients get ``device=cuda`` and ``--client-gpus`` of it each (Ray packs
1/client-gpus client actors onto the one GPU). Default ``auto``: cuda where one is present.

Memory is that of the whole process tree (SuperLink, simulation process, Ray's
GCS/raylet/workers), sampled every 0.5 s with psutil: the summed RSS, and the summed
PSS, which counts a shared page once (RSS counts Ray's shared-memory object store once
per process that maps it). Round 1
(worker start-up) is excluded; round_s is the median of the other rounds. CPU time is
sampled with it: cpu_s_round is the CPU-seconds the whole tree used per round over
rounds 2..N, and bench_simulation_cpu.csv splits it by process: what wall time hides where
two client actors work at once. (The plain loop's torch threads spin while they wait, so
its CPU time is no floor to compare with.)

Scale rows (``--registered 10000:100``): R registered clients, K sampled per round, fedsim
alone, on the procedural ``synthetic`` dataset (50,000 images, drawn at 8x8 like the digits: five per client at
10,000), where the acceptance is a peak and a first-round time; they add start-up (command
start to the first round's start) and the first round's time to the table.

    python experiments/bench_simulation.py --out DIR [--clients 10 100 1000] [--rounds 3]
        [--registered 10000:100] [--device auto|cpu|cuda] [--client-gpus 0.0625] [--runners plain fedsim]

writes DIR/bench_simulation.csv (clients, per_round, runner, device, round_s, first_round_s,
startup_s, total_s, peak_rss_mb, peak_pss_mb, cpu_s_round),
DIR/bench_simulation.png, the ratios of the run (DIR/bench_simulation_ratios.csv), and the
memory over time: DIR/bench_simulation_memory.csv and .png, and each process's PSS when the
tree's peaked (DIR/bench_simulation_processes.csv: where the fixed cost goes), and each
process's CPU-seconds per round (DIR/bench_simulation_cpu.csv: where the per-round cost goes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import psutil

HERE = Path(__file__).resolve().parent
BENCH_SET = ["partition=iid", "local-epochs=1", "batch-size=16", "eval-every=0",
             "model='ddpm-small'", "dataset='digits'", "seed=0"]


SCALE_SET = ["dataset='synthetic'", "image-size=8"]  # scale rows: enough images for 10,000 clients (BENCH_SET's digits: 1,797)


def bench_overrides(n: int, rounds: int, device: str = "cpu", client_gpus: float = 0.0,
                    per_round: int | None = None) -> list[str]:
    """The run's --set items: all n clients every round, or (scale rows) per_round of n on synthetic."""
    scale = per_round is not None and per_round != n
    return BENCH_SET + (SCALE_SET if scale else []) + [
        f"num-clients={n}", f"clients-per-round={per_round or n}", f"rounds={rounds}", f"device='{device}'",
        f"client-gpus={client_gpus if device == 'cuda' else 0.0}"]


def set_args(items: list[str]) -> list[str]:
    """--set KEY=VALUE for each item: the command line both fedsim and flower_direct.py take."""
    return [arg for item in items for arg in ("--set", item)]


class TreeRSS(threading.Thread):
    """Memory of a process and all its descendants over time (MB): the summed RSS, and the summed
    PSS (shared pages divided among the processes that map them: Ray's shared-memory object store
    is mapped by the raylet and every worker, and RSS counts it once per process)."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root, self.interval, self.running = psutil.Process(pid), interval, True
        self.peak = self.peak_pss = 0.0
        self.samples: list[tuple[float, float, float]] = []  # (seconds since start, RSS, PSS)
        self.at_peak: dict[str, float] = {}  # process -> PSS (MB) when the tree's PSS peaked
        self.cpu: list[tuple[float, dict[str, float]]] = []  # (seconds since start, process -> CPU-s so far)

    def run(self) -> None:
        t0, self.t0_unix = time.monotonic(), time.time()
        while self.running:
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            rss = pss = 0
            each: dict[str, float] = {}
            cpu: dict[str, float] = {}
            for p in procs:
                try:
                    info, times, name = p.memory_full_info(), p.cpu_times(), f"{p.pid} {process_name(p)}"
                    rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
                    each[name] = getattr(info, "pss", info.rss) / 2**20
                    cpu[name] = times.user + times.system
                except psutil.Error:
                    pass
            t = time.monotonic() - t0
            self.cpu.append((t, cpu))
            if pss / 2**20 > self.peak_pss:
                self.at_peak = each
            self.samples.append((t, rss / 2**20, pss / 2**20))
            self.peak, self.peak_pss = max(self.peak, rss / 2**20), max(self.peak_pss, pss / 2**20)
            time.sleep(self.interval)


def process_name(p: psutil.Process) -> str:
    """A short name: Ray's workers by their title (ray::ClientAppActor), a binary by its name
    (raylet, gcs_server), a Python process by the script or module it runs."""
    cmd = p.cmdline()
    if not cmd:
        return p.name()
    if cmd[0].startswith("ray::"):
        return cmd[0].split()[0].split(".")[0]  # ray::ClientAppActor.run while it runs a method
    first = Path(cmd[0].split()[0]).name  # the raylet's title holds its arguments
    if not first.startswith("python"):
        return first
    for i, arg in enumerate(cmd[1:], start=1):
        if arg == "-m" and i + 1 < len(cmd):
            return cmd[i + 1]
        if not arg.startswith("-"):
            return Path(arg).name
    return first


class Memory(NamedTuple):
    peak_rss_mb: float
    peak_pss_mb: float
    samples: list[tuple[float, float, float]]
    at_peak: dict[str, float]
    total_s: float  # the whole command, start-up included
    cpu: list[tuple[float, dict[str, float]]]
    t0_unix: float  # when sampling started


def cpu_between(samples: list[tuple[float, dict[str, float]]], start: float, end: float) -> dict[str, float]:
    """CPU-seconds each process used between two times (seconds since the command's start): its
    cumulative CPU time interpolated between samples, 0 before it appeared, its last value after."""
    import numpy as np
    import pandas as pd

    ts = [t for t, _ in samples]
    seen = pd.DataFrame([each for _, each in samples], index=ts).ffill().fillna(0.0)
    return {name: float(np.interp(end, ts, col) - np.interp(start, ts, col)) for name, col in seen.items()}


def measured(cmd: list[str], log: Path) -> Memory:
    with log.open("w") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        sampler = TreeRSS(proc.pid)
        sampler.start()
        code = proc.wait()
        total = time.perf_counter() - t0
        sampler.running = False
        sampler.join()
    if code != 0:
        raise SystemExit(f"bench: {' '.join(cmd[:3])} failed (exit {code}); see {log}")
    return Memory(sampler.peak, sampler.peak_pss, sampler.samples, sampler.at_peak, total, sampler.cpu, sampler.t0_unix)


def plain_loop(n: int, rounds: int, out_json: Path, device: str = "cpu") -> None:
    """The floor: the same local training, sequentially, in this process."""
    import torch

    from fedsim.config import resolve
    from fedsim.data.clients import client_partition, dataset
    from fedsim.models.train import run_task, train_local
    from fedsim.models.workspace import fresh_model
    from fedsim.rng import torch_generator

    cfg = resolve(None, bench_overrides(n, rounds, device))
    train = dataset(cfg, "train")
    parts = client_partition(cfg, train.labels)
    model, task = fresh_model(cfg, train).to(device), run_task(cfg)
    global_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    times, starts = [], []
    for rnd in range(1, rounds + 1):
        starts.append(time.time())
        t0 = time.perf_counter()
        acc = {k: torch.zeros_like(v) for k, v in global_sd.items()}
        total = 0
        for pid in range(n):
            model.load_state_dict(global_sd)
            idx = torch.from_numpy(parts[pid])
            stats = train_local(model, task, train.images[idx], torch.from_numpy(train.labels[parts[pid]]),
                                epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                generator=torch_generator(cfg.seed, "train", rnd, pid))
            for k, v in model.state_dict().items():
                acc[k] += v * stats.num_examples
            total += stats.num_examples
        global_sd = {k: v / total for k, v in acc.items()}
        times.append(time.perf_counter() - t0)
    out_json.write_text(json.dumps({"round_s": times, "round_start_unix": starts}))


def median_after_first(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


class Timing(NamedTuple):
    round_s: float  # median of the rounds after the first
    first_round_s: float
    startup_s: float  # command start to the first round's start (None where a runner cannot tell)
    window: tuple[float, float, int] | None = None  # Unix times of round 2's start and the last round's end, rounds


def cpu_per_round(timing: Timing, mem: Memory) -> dict[str, float] | None:
    """Each process's CPU-seconds per round over rounds 2..N (None where the runner gives no window)."""
    if timing.window is None:
        return None
    start, end, rounds = timing.window
    used = cpu_between(mem.cpu, start - mem.t0_unix, end - mem.t0_unix)
    return {name: v / (rounds - 1) for name, v in used.items()}


def round_two_unix(server_log: Path) -> float | None:
    """When Flower's log says round 2 started (its timestamps are local time, to the millisecond)."""
    import datetime

    for line in server_log.read_text(errors="replace").splitlines():
        if "[ROUND 2/" in line:
            return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def label(n: int, per_round: int | None) -> str:
    return f"{n}" if per_round in (None, n) else f"{n}x{per_round}"


def run_fedsim(n: int, rounds: int, out: Path, device: str, client_gpus: float,
               per_round: int | None = None) -> tuple[Timing, Memory]:
    import pandas as pd

    run_dir = out / f"fedsim-{label(n, per_round)}"
    cmd = [sys.executable, "-m", "fedsim.cli", "run", "--out", str(run_dir)]
    cmd += set_args(bench_overrides(n, rounds, device, client_gpus, per_round))
    mem = measured(cmd, out / f"fedsim-{label(n, per_round)}.log")
    df = pd.read_csv(run_dir / "metrics.csv")
    rounds_s = list(df["wall_s"] - df["eval_s"])
    # the command less the rounds (their wall times) and what followed the last one
    startup = mem.total_s - float(df["wall_s"].sum()) - teardown_s(run_dir)
    two = round_two_unix(run_dir / "logs" / "server.log") if len(df) > 1 else None
    window = None if two is None else (two, two + float(df["wall_s"].iloc[1:].sum()), len(df))
    return Timing(median_after_first(rounds_s), rounds_s[0], startup, window), mem


def teardown_s(run_dir: Path) -> float:
    """Seconds from the last round's end to the run's end (final model, plots, shutdown), from the
    times status.json and metrics.csv were last written."""
    try:
        return max(0.0, (run_dir / "status.json").stat().st_mtime - (run_dir / "metrics.csv").stat().st_mtime)
    except OSError:
        return 0.0


def run_plain(n: int, rounds: int, out: Path, device: str, client_gpus: float,
              per_round: int | None = None) -> tuple[Timing, Memory]:
    res = out / f"plain-{n}.json"
    mem = measured([sys.executable, __file__, "--plain", str(n), "--rounds", str(rounds), "--device", device,
                    "--out", str(res)], out / f"plain-{n}.log")
    got = json.loads(res.read_text())
    times, starts = got["round_s"], got["round_start_unix"]
    window = (starts[1], starts[-1] + times[-1], len(times)) if len(times) > 1 else None
    return Timing(median_after_first(times), times[0], mem.total_s - sum(times), window), mem


def run_flower_direct(n: int, rounds: int, out: Path, device: str, client_gpus: float,
                      per_round: int | None = None) -> tuple[Timing, Memory]:
    """experiments/flower_direct.py: the same job written directly on Flower (quickstart style)."""
    cmd = [sys.executable, str(HERE / "flower_direct.py"), "--out", str(out / f"flower-direct-{n}")]
    cmd += set_args(bench_overrides(n, rounds, device, client_gpus))
    mem = measured(cmd, out / f"flower-direct-{n}.log")
    times = json.loads((out / f"flower-direct-{n}" / "flower_direct.json").read_text())["round_s"]
    return Timing(median_after_first(times), times[0], None), mem


RUNNERS = {"plain": run_plain, "fedsim": run_fedsim, "flower-direct": run_flower_direct}


def ratios(rows: list[dict]) -> list[dict]:
    """Per client count, the ratios of one run: fedsim / plain and flower-direct / fedsim (round time),
    and fedsim's peak PSS against its value at the smallest count."""
    rows = [r for r in rows if r["per_round"] == r["clients"]]  # all train every round (not the scale rows)
    got = {(r["clients"], r["runner"]): r for r in rows}
    counts = sorted({r["clients"] for r in rows})
    base = got.get((counts[0], "fedsim")) if counts else None
    out = []
    for n in counts:
        f, p, d = got.get((n, "fedsim")), got.get((n, "plain")), got.get((n, "flower-direct"))
        out.append({"clients": n,
                    "fedsim_over_plain": round(f["round_s"] / p["round_s"], 2) if f and p else None,
                    "flower_direct_over_fedsim": round(d["round_s"] / f["round_s"], 2) if f and d else None,
                    "fedsim_pss_over_smallest": round(f["peak_pss_mb"] / base["peak_pss_mb"], 3) if f and base else None})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (CSV, PNG, logs)")
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--registered", nargs="*", default=[], metavar="R:K",
                        help="scale rows: R registered clients, K per round, fedsim alone (e.g. 10000:100)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where both runners train (auto: cuda if available)")
    parser.add_argument("--client-gpus", type=float, default=0.0625,
                        help="GPU share of each fedsim client actor with --device cuda (0.0625: 16 per GPU)")
    parser.add_argument("--runners", nargs="+", choices=list(RUNNERS), default=list(RUNNERS),
                        help="which runners (default all; a ratio needs both of its runners)")
    parser.add_argument("--plain", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        scale = [tuple(int(v) for v in item.split(":")) for item in args.registered]
    except ValueError:
        scale = []
    if len(scale) != len(args.registered) or not all(len(rk) == 2 and 0 < rk[1] <= rk[0] for rk in scale):
        parser.error(f"--registered takes R:K pairs with 0 < K <= R, got {' '.join(args.registered)}")
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.plain:
        plain_loop(args.plain, args.rounds, Path(args.out), args.device)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(n, n, runner) for n in args.clients for runner in RUNNERS if runner in args.runners]
    jobs += [(n, k, "fedsim") for n, k in scale]
    rows, traces, processes, cpus = [], [], [], []
    for n, k, runner in jobs:
        timing, mem = RUNNERS[runner](n, args.rounds, out, args.device, args.client_gpus, per_round=k)
        cpu = cpu_per_round(timing, mem)
        rows.append({"clients": n, "per_round": k, "runner": runner, "device": args.device,
                     "round_s": round(timing.round_s, 3), "first_round_s": round(timing.first_round_s, 3),
                     "startup_s": None if timing.startup_s is None else round(timing.startup_s, 2),
                     "total_s": round(mem.total_s, 2), "peak_rss_mb": round(mem.peak_rss_mb, 1),
                     "peak_pss_mb": round(mem.peak_pss_mb, 1),
                     "cpu_s_round": None if cpu is None else round(sum(cpu.values()), 2)})
        traces += [{"clients": n, "per_round": k, "runner": runner, "t_s": round(t, 2), "rss_mb": round(r, 1),
                    "pss_mb": round(q, 1)} for t, r, q in mem.samples]
        processes += [{"clients": n, "per_round": k, "runner": runner, "process": name.split(" ", 1)[1],
                       "pss_mb": round(v, 1)} for name, v in sorted(mem.at_peak.items(), key=lambda kv: -kv[1])]
        cpus += [{"clients": n, "per_round": k, "runner": runner, "process": name.split(" ", 1)[1],
                  "cpu_s_round": round(v, 3)} for name, v in sorted((cpu or {}).items(), key=lambda kv: -kv[1]) if v >= 0.005]
        print(f"{label(n, k):>9} clients  {runner:<13}  {timing.round_s:8.2f} s/round (first {timing.first_round_s:.1f})"
              f"  peak RSS {mem.peak_rss_mb:8.0f} MB  PSS {mem.peak_pss_mb:8.0f} MB  total {mem.total_s:.0f} s",
              flush=True)
    import pandas as pd
    from bench_plots import plot, plot_memory  # this script's folder: sys.path[0]

    pd.DataFrame(rows).to_csv(out / "bench_simulation.csv", index=False)
    pd.DataFrame(traces).to_csv(out / "bench_simulation_memory.csv", index=False)
    pd.DataFrame(processes).to_csv(out / "bench_simulation_processes.csv", index=False)
    pd.DataFrame(cpus).to_csv(out / "bench_simulation_cpu.csv", index=False)
    plot_memory(traces, out / "bench_simulation_memory.png")
    plot(rows, out / "bench_simulation.png")
    table = ratios(rows)
    pd.DataFrame(table).to_csv(out / "bench_simulation_ratios.csv", index=False)
    for r in table:
        print(f"{r['clients']:>5} clients: fedsim/plain {r['fedsim_over_plain']}, flower-direct/fedsim "
              f"{r['flower_direct_over_fedsim']}, fedsim peak PSS / at {table[0]['clients']}: "
              f"{r['fedsim_pss_over_smallest']}")


if __name__ == "__main__":
    main()
