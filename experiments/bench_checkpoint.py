"""What checkpointing costs: a run with ``checkpoint-every = 1`` against the same run with 0.

The config is the one tests/test_resume_e2e.py resumes (ddpm-small on digits, 10 clients,
4 per round, FedEMD, DHQ with error feedback and downlink, the ledger, recording), so the
checkpoints hold every kind of state. The two settings alternate, ``--repeats`` times
each. Per run: the median round time over rounds 2.. (``wall_s - eval_s``; round 1 holds
worker start-up), the server checkpoint's size, the clients' state files in total, and
the time to write one checkpoint (measured in-process on the last checkpoint's payload,
median of 5 writes).

    python experiments/bench_checkpoint.py --out DIR [--repeats 2] [--rounds 6]

writes DIR/bench_checkpoint.csv and DIR/bench_checkpoint.png (round time with and
without checkpoints, and the ratio).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = ["num-clients=10", "clients-per-round=4", "partition='exclusive-1'", "local-epochs=1",
            "eval-every=0", "seed=3", "selector='fedemd'", "compression='dhq'", "keep-ratio=0.2",
            "compress-downlink=true", "record-clients='all'", "ledger-every=2"]


def one_run(out: Path, rounds: int, every: int) -> dict:
    cmd = [sys.executable, "-m", "fedsim.cli", "run", "--out", str(out), "--set", f"rounds={rounds}",
           "--set", f"checkpoint-every={every}"] + [a for s in SETTINGS for a in ("--set", s)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"fedsim run failed: {(res.stderr or res.stdout).strip().splitlines()[-1:]}")
    with (out / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    round_s = statistics.median(float(r["wall_s"]) - float(r["eval_s"]) for r in rows[1:])
    ckpts = sorted((out / "checkpoints").glob("round-*.ckpt"))
    clients = list((out / "checkpoints" / "clients").rglob("*.state"))
    return {"checkpoint_every": every, "round_s": round_s,
            "checkpoint_mb": ckpts[-1].stat().st_size / 1e6 if ckpts else 0.0,
            "client_state_mb": sum(p.stat().st_size for p in clients) / 1e6,
            "write_s": _write_time(ckpts[-1]) if ckpts else 0.0}


def _write_time(path: Path) -> float:
    from fedsim.records.checkpoint import Checkpoints

    payload = Checkpoints(path.parent.parent).load(int(path.stem.split("-")[1])).payload
    with tempfile.TemporaryDirectory() as tmp:
        target = Checkpoints(tmp, keep=1)
        times = []
        for i in range(5):
            t0 = time.perf_counter()
            target.save(i + 1, payload)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for every, color in ((0, "tab:gray"), (1, "tab:blue")):
        ys = [r["round_s"] for r in rows if r["checkpoint_every"] == every]
        ax.scatter([every] * len(ys), ys, color=color)
        ax.hlines(statistics.median(ys), every - 0.2, every + 0.2, color=color)
    ax.set_xticks([0, 1], ["no checkpoints", "checkpoint every round"])
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylabel("median round time (s)")
    ax.set_title(f"checkpoint cost: {ratio(rows):.3f}x the round time", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def ratio(rows: list[dict]) -> float:
    return (statistics.median(r["round_s"] for r in rows if r["checkpoint_every"] == 1)
            / statistics.median(r["round_s"] for r in rows if r["checkpoint_every"] == 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for every in (0, 1):
                row = one_run(Path(tmp) / f"run-{rep}-{every}", args.rounds, every)
                rows.append({"repeat": rep, **row})
                print(f"repeat {rep}, checkpoint-every {every}: round {row['round_s']:.2f} s, checkpoint "
                      f"{row['checkpoint_mb']:.2f} MB, client state {row['client_state_mb']:.2f} MB, "
                      f"write {row['write_s'] * 1e3:.1f} ms", flush=True)
    with (args.out / "bench_checkpoint.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "bench_checkpoint.png")
    print(f"round time with / without checkpoints (medians): {ratio(rows):.3f}")


if __name__ == "__main__":
    main()
