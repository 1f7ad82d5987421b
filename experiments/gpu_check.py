"""The GPU check (experiments/gpu_check.sh runs it): three timed jobs on the machine's first GPU.

1. ``quickstart``: experiments/quickstart.toml with ``client-gpus = 0.25`` (four client actors
   share the GPU), its metrics at the last round.
2. ``bench``: experiments/bench_simulation.py at 100 clients on the GPU (plain loop and fedsim,
   the same local work), seconds per round and peak memory.
3. ``showcase-round``: one round of experiments/showcase.toml with its quality evaluation
   (1,000 samples, 50 sampling steps): the round's training and evaluation seconds.

Each job runs in its own subprocess under a time limit, so a failing or slow one is recorded
and the next one still runs. Where no CUDA GPU is visible the same three jobs run on the CPU,
cut down (quickstart 2 rounds, bench at 10 clients, 100 samples), to check the script itself.

Writes DIR/gpu_check.csv (job, device, gpu, status, wall_s, and what the job measured) and a
log per job; prints the table.

    python experiments/gpu_check.py --out DIR [--budget-s S] [--jobs quickstart,bench,showcase-round]
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
MIN_LIMIT_S = 30.0  # the least time a job is given, whatever is left of the budget
FIELDS = ["job", "device", "gpu", "status", "wall_s", "round_s", "eval_s", "detail"]


def gpu_name() -> str:
    if not torch.cuda.is_available():
        return ""
    p = torch.cuda.get_device_properties(0)
    return f"{p.name} ({p.total_memory / 2**30:.0f} GiB)"


def fedsim(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "fedsim.cli", *args]


def sets(pairs: dict[str, object]) -> list[str]:
    return [a for k, v in pairs.items() for a in ("--set", f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}")]


def jobs(out: Path, cuda: bool) -> list[tuple[str, list[str], float]]:
    """(name, command, share of the budget) of each job."""
    device = "cuda" if cuda else "cpu"
    quick = {"device": device, "client-gpus": 0.25 if cuda else 0.0}
    if not cuda:
        quick |= {"rounds": 2, "eval-every": 2, "num-samples": 50}
    show = {"device": device, "rounds": 1, "eval-every": 1}
    if not cuda:
        show |= {"num-samples": 100}
    return [
        ("quickstart", fedsim(["run", str(HERE / "quickstart.toml"), "--out", str(out / "quickstart"), *sets(quick)]),
         0.4),
        ("bench", [sys.executable, str(HERE / "bench_simulation.py"), "--out", str(out / "bench"),
                   "--clients", "100" if cuda else "10", "--rounds", "3", "--device", device,
                   "--runners", "plain", "fedsim"], 0.3),
        ("showcase-round", fedsim(["run", str(HERE / "showcase.toml"), "--out", str(out / "showcase-round"),
                                   *sets(show)]), 0.3),
    ]


def measured(job: str, out: Path) -> dict:
    """What a finished job's files say: round and evaluation seconds, the last quality metrics."""
    if job == "bench":
        df = pd.read_csv(out / "bench" / "bench_simulation.csv")
        by = {r.runner: r for r in df.itertuples()}
        return {"round_s": round(float(by["fedsim"].round_s), 3),
                "detail": f"plain {by['plain'].round_s:.2f} s/round; fedsim/plain "
                          f"{by['fedsim'].round_s / by['plain'].round_s:.2f}; peak MB plain "
                          f"{by['plain'].peak_rss_mb:.0f} / fedsim {by['fedsim'].peak_rss_mb:.0f}"}
    df = pd.read_csv(out / job / "metrics.csv")
    last = df.iloc[-1]
    keep = [c for c in ("recognised", "label_match", "fd", "kid") if c in df and pd.notna(last[c])]
    return {"round_s": round(float((df["wall_s"] - df["eval_s"]).median()), 3), "eval_s": round(float(df["eval_s"].max()), 3),
            "detail": f"{len(df)} rounds; " + ", ".join(f"{c} {last[c]:.4g}" for c in keep)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall-clock budget of the jobs (default 480 s on a GPU, 1200 s for the CPU fallback)")
    ap.add_argument("--jobs", default="quickstart,bench,showcase-round", help="comma-separated subset")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    gpu, device = gpu_name(), "cuda" if cuda else "cpu"
    if args.budget_s is None:
        args.budget_s = 480.0 if cuda else 1200.0
    print(f"torch {torch.__version__}; device {device}{'; ' + gpu if gpu else ' (no CUDA GPU: the CPU fallback)'}",
          flush=True)
    rows, start = [], time.monotonic()
    with (out / "gpu_check.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        chosen = [j for j in jobs(out, cuda) if j[0] in args.jobs.split(",")]
        for job, cmd, share in chosen:
            share /= sum(c[2] for c in chosen)
            limit = max(MIN_LIMIT_S, min(share * args.budget_s, args.budget_s - (time.monotonic() - start)))
            t0 = time.monotonic()
            with (out / f"{job}.log").open("w") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                try:
                    status = "ok" if proc.wait(timeout=limit) == 0 else f"failed (exit {proc.returncode})"
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(timeout=45)  # fedsim ends its SuperLink tree within 20 s
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                    status = f"timed out after {limit:.0f} s"
            row = {"job": job, "device": device, "gpu": gpu, "status": status,
                   "wall_s": round(time.monotonic() - t0, 1)}
            if status == "ok":
                try:
                    row |= measured(job, out)
                except (OSError, KeyError, ValueError) as err:
                    row["status"] = f"ok, unreadable output: {err}"
            else:
                tail = (out / f"{job}.log").read_text(errors="replace").strip().splitlines()[-1:]
                row["detail"] = tail[0][:200] if tail else ""
            writer.writerow(row)
            f.flush()
            rows.append(row)
            print(f"{job:<15} {status:<24} {row['wall_s']:7.1f} s  {row.get('detail', '')}", flush=True)
    print(pd.DataFrame(rows).to_string(index=False))
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
