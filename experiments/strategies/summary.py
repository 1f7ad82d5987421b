"""Strategies experiment, the numbers: a row per run, then intervals over seeds per model and method.

Per run (results.csv):
- final: the mean of the last ``final_window`` rounds of test accuracy (classifier) or of the
  server's eval loss (diffusion); backdoor: the same of ``backdoor_acc`` (the attack success
  rate) where the run has a backdoor;
- the diffusion model's quality at its last evaluated round: recognised share, FD and KID
  (fedsim/evaluation; their floors beside them);
- rounds_to_target: the first round whose 3-round moving average meets the spec's target for
  the model (accuracy at least, eval loss at most); a run that never meets it is censored;
- uplink / downlink MB (measured), wall_s (the rounds), diverged (eval loss non-finite or
  above 100x its round-1 value).

Per model and method (summary.csv), over the seeds that finished (fedsim/records/stats.py):
mean and 95 % t-interval of each number; vs its reference method (the spec's ``reference``,
FedAvg or the same rule without attackers), the paired per-seed difference and its verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from fedsim.cli.sweep import is_done
from fedsim.records.stats import censored_mean, first_hit, flat_intervals, paired_difference, t_interval, verdict


class Run(NamedTuple):
    model: str
    method: str
    seed: int
    overrides: dict
    reference: str
    panel: str


def folder_of(out: Path, run: Run, method: str | None = None) -> Path:
    name = (method or run.method).replace(" ", "_").replace("%", "pct")
    return Path(out) / "runs" / run.model / name / f"seed{run.seed}"


def read(folder: Path) -> pd.DataFrame | None:
    return pd.read_csv(folder / "metrics.csv") if is_done(folder) else None


def is_classifier(df: pd.DataFrame) -> bool:
    return "test_acc" in df


def diverged(df: pd.DataFrame) -> bool:
    loss = df["eval_loss"].to_numpy(dtype=float)
    return bool(len(loss)) and bool((~np.isfinite(loss)).any() or (loss > 100 * abs(loss[0])).any())


COLUMNS = ["model", "method", "reference", "panel", "seed", "strategy", "final", "backdoor", "recognised", "fd",
           "fd_floor", "kid", "kid_floor", "target", "reached", "rounds_to_target", "rounds", "uplink_mb",
           "downlink_mb", "wall_s", "diverged", "note"]


def per_run(out: Path, runs: list[Run], window: int, targets: dict[str, float]) -> pd.DataFrame:
    rows = []
    for run in runs:
        row = {"model": run.model, "method": run.method, "reference": run.reference, "panel": run.panel,
               "seed": run.seed, "strategy": run.overrides.get("strategy", "fedavg")}
        folder = folder_of(Path(out), run)
        df = read(folder)
        if df is None:
            err = folder / "error.txt"
            rows.append({**row, "note": err.read_text().strip() if err.exists() else "not run"})
            continue
        higher = is_classifier(df)
        q = df["test_acc"] if higher else df["eval_loss"]
        hit = first_hit(q, targets[run.model], higher=higher)
        last = df.dropna(subset=["recognised"]).iloc[-1] if "recognised" in df and df.recognised.notna().any() else {}
        row.update(final=float(q.tail(window).mean()), target=targets[run.model], reached=hit is not None,
                   rounds_to_target=int(df["round"].iloc[hit]) if hit is not None else None, rounds=len(df),
                   backdoor=float(df["backdoor_acc"].tail(window).mean()) if "backdoor_acc" in df else None,
                   **{k: float(last[k]) if k in last else None for k in ("recognised", "fd", "fd_floor", "kid",
                                                                          "kid_floor")},
                   uplink_mb=df["bytes_up_total"].iloc[-1] / 1e6, downlink_mb=df["bytes_down_total"].iloc[-1] / 1e6,
                   wall_s=float(df["wall_s"].sum()), diverged=diverged(df), note="")
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def scale(model: str) -> float:
    """Accuracy and shares in percent (differences in points); losses and distances as they are."""
    return 100.0 if model == "classifier" else 1.0


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    out = []
    done = rows[rows.note == ""]
    for (model, method), g in rows.groupby(["model", "method"], sort=False):
        d = done[(done.model == model) & (done.method == method)]
        first = g.iloc[0]
        ref = done[(done.model == model) & (done.method == first.reference)]
        k = scale(model)
        agg = {"model": model, "method": method, "reference": first.reference, "panel": first.panel,
               "strategy": first.strategy, "planned": len(g), "n": len(d),
               "seeds": " ".join(str(int(s)) for s in d.seed),
               "failed": "; ".join(f"seed {int(r.seed)}: {r.note}" for r in g.itertuples()
                                   if r.note and r.note != "not run")}
        agg["final"] = t_interval(list(k * d.final))
        higher = model == "classifier"
        if method != first.reference:
            diff = paired_difference(dict(zip(d.seed, k * d.final)), dict(zip(ref.seed, k * ref.final)))
            agg["vs_reference"], agg["verdict"] = diff, verdict(diff, lower_is_better=not higher)
        else:
            agg["vs_reference"], agg["verdict"] = None, "reference"
        agg["backdoor"] = t_interval(list(100 * d.backdoor.dropna())) if d.backdoor.notna().any() else None
        for col, f in (("recognised", 100.0), ("fd", 1.0), ("kid", 1.0)):
            agg[col] = t_interval(list(f * d[col].dropna())) if d[col].notna().any() else None
        agg["fd_floor"] = float(d.fd_floor.mean()) if d.fd_floor.notna().any() else None
        agg["kid_floor"] = float(d.kid_floor.mean()) if d.kid_floor.notna().any() else None
        reached = d.reached.astype(bool)
        agg["to_target"] = "; ".join(f"{int(r)}" if ok else f"> {int(n)}"
                                     for r, ok, n in zip(d.rounds_to_target, reached, d.rounds))
        agg["rounds_mean"], agg["rounds_bound"] = censored_mean(reached, d.rounds_to_target, d.rounds + 1)
        agg["uplink_mb"] = t_interval(list(d.uplink_mb))
        agg["diverged"] = int(d.diverged.astype(bool).sum())
        agg["wall_s"] = float(d.wall_s.sum())
        out.append(agg)
    return pd.DataFrame(out)


def curve_data(out: Path, runs: list[Run]) -> dict[tuple[str, str], dict[str, list[pd.Series]]]:
    """Per (model, panel), per method: each finished seed's per-round test accuracy in % (or eval loss)."""
    series: dict[tuple[str, str], dict[str, list[pd.Series]]] = {}
    for run in runs:
        df = read(folder_of(Path(out), run))
        if df is None:
            continue
        col, k = ("test_acc", 100.0) if is_classifier(df) else ("eval_loss", 1.0)
        series.setdefault((run.model, run.panel), {}).setdefault(run.method, []).append(k * df.set_index("round")[col])
    return series


def flat(agg: pd.DataFrame) -> pd.DataFrame:
    """summary.csv: each interval as mean, low, high."""
    return pd.DataFrame(flat_intervals(agg.to_dict("records")))
