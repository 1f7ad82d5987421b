"""Compression experiment, the numbers: one row per run, then means with 95 % t-intervals over seeds.

Per run (results.csv; one row per model, partition, method and seed):
- final_quality: mean over the last ``final_window`` rounds of the test accuracy
  (classifier) or of the server's eval loss (diffusion);
- uplink_bytes, downlink_bytes: cumulative measured bytes; uploads: client replies;
- target: 99 % of FedAvg's final accuracy (101 % of its eval loss) on the same model,
  partition and seed; rounds_to_target: the first round whose 3-round moving average
  meets it, bytes_to_target: the cumulative uplink bytes by then. A run that never meets
  it is censored (reached = False; both empty): its true value lies beyond the budget;
- diverged: the eval loss became non-finite or rose above 100x its round-1 value in some
  round (training blew up; the model is then at chance and the run's numbers say nothing
  about its codec);
- wall_s: sum of metrics.csv's wall_s (the rounds); elapsed_s: the whole ``fedsim run``
  with its start-up, as run.py timed it (empty for runs it did not time).

Per model, partition and method (summary.csv, results.md), over the seeds that finished
(shared/papers/evaluation.md, section 3; fedsim/records/stats.py):
- final quality and uplink MB: mean and 95 % t-interval, n seeds;
- vs FedAvg: the paired per-seed difference of final quality (accuracy in points),
  its interval and verdict ("not significant" when the interval contains 0);
- uplink reduction: FedAvg's uplink bytes over the method's, per seed, then the interval;
- rounds and MB to target: per seed, "> R" when censored; a censored run counts as
  R + 1 rounds and as its total uplink bytes, so a mean over censored runs is a lower
  bound (shown with >=).
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
    partition: str
    method: str
    seed: int
    overrides: dict


def folder_of(out: Path, run: Run, method: str | None = None) -> Path:
    name = (method or run.method).replace(" ", "_")
    return out / "runs" / run.model / run.partition / name / f"seed{run.seed}"


def quality(df: pd.DataFrame, model: str) -> tuple[str, pd.Series, bool]:
    """(column, per-round values, higher is better)."""
    if model == "classifier":
        return "test_acc", df["test_acc"], True
    return "eval_loss", df["eval_loss"], False


def settings(run: Run, k_default: int) -> dict:
    """What the table says about a method: codec, p, L (or s), the K_t schedule."""
    o = run.overrides
    codec = o.get("compression", "none")
    levels = {"dhq": o.get("dhq-levels", 4), "stc": 1, "qsgd": o.get("qsgd-levels", 16)}.get(codec)
    sampling = o.get("sampling", "constant")
    return {"method": run.method, "codec": codec, "model": run.model, "partition": run.partition, "seed": run.seed,
            "keep_ratio": o.get("keep-ratio") if codec in ("topk", "stc", "dhq") else None, "levels": levels,
            "sampling": sampling, "k_start": o.get("clients-per-round", k_default),
            "k_min": o.get("sampling-min") if sampling != "constant" else None}


def diverged(df: pd.DataFrame) -> bool:
    """Eval loss non-finite, or above 100x its round-1 value, in some round."""
    loss = df["eval_loss"].to_numpy(dtype=float)
    return bool(len(loss)) and bool((~np.isfinite(loss)).any() or (loss > 100 * abs(loss[0])).any())


def _read(folder: Path) -> pd.DataFrame | None:
    return pd.read_csv(folder / "metrics.csv") if is_done(folder) else None


def _elapsed(folder: Path) -> float | None:
    try:
        return float((folder / "elapsed_s.txt").read_text())
    except (OSError, ValueError):
        return None


def per_run(out: Path, runs: list[Run], window: int, k_default: dict[str, int]) -> pd.DataFrame:
    """One row per planned run; a run that has not finished has only its note."""
    rows = []
    for run in runs:
        row = settings(run, k_default[run.model])
        folder = folder_of(out, run)
        df = _read(folder)
        if df is None:
            err = folder / "error.txt"
            rows.append({**row, "note": err.read_text().strip() if err.exists() else "not run"})
            continue
        metric, q, higher = quality(df, run.model)
        row.update(quality_metric=metric, final_quality=float(q.tail(window).mean()),
                   uplink_bytes=int(df["bytes_up_total"].iloc[-1]), downlink_bytes=int(df["bytes_down_total"].iloc[-1]),
                   uploads=int(df["clients_sampled"].sum()), rounds=len(df),
                   encode_s=float(df["encode_s"].mean()) if "encode_s" in df else 0.0,
                   wall_s=float(df["wall_s"].sum()), elapsed_s=_elapsed(folder), diverged=diverged(df), note="")
        ref = df if run.method == "fedavg" else _read(folder_of(out, run, "fedavg"))  # same seed
        if ref is not None:
            ref_final = float(quality(ref, run.model)[1].tail(window).mean())
            target = 0.99 * ref_final if higher else 1.01 * ref_final
            hit = first_hit(q, target, higher=higher)
            row.update(target=target, reached=hit is not None,
                       uplink_reduction=int(ref["bytes_up_total"].iloc[-1]) / row["uplink_bytes"])
            if hit is not None:
                row.update(rounds_to_target=int(df["round"].iloc[hit]),
                           bytes_to_target=int(df["bytes_up_total"].iloc[hit]))
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


COLUMNS = ["method", "codec", "model", "partition", "seed", "keep_ratio", "levels", "sampling", "k_start", "k_min",
           "quality_metric", "final_quality", "uplink_bytes", "downlink_bytes", "uplink_reduction", "uploads",
           "rounds", "target", "reached", "rounds_to_target", "bytes_to_target", "encode_s", "wall_s", "elapsed_s",
           "diverged", "note"]


def scale(model: str) -> float:
    """Display units: accuracy in percent (differences in points), eval loss as it is."""
    return 100.0 if model == "classifier" else 1.0


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per model, partition and method over its finished seeds (the module docstring)."""
    out = []
    done = rows[rows.note == ""]
    for (model, partition, method), g in rows.groupby(["model", "partition", "method"], sort=False):
        d = done[(done.model == model) & (done.partition == partition) & (done.method == method)]
        ref = done[(done.model == model) & (done.partition == partition) & (done.method == "fedavg")]
        k = scale(model)
        first = g.iloc[0]
        agg = {c: first[c] for c in ("model", "partition", "method", "codec", "keep_ratio", "levels", "sampling",
                                     "k_start", "k_min")}
        agg.update(planned=len(g), n=len(d), seeds=" ".join(str(int(s)) for s in d.seed),
                   failed="; ".join(f"seed {int(r.seed)}: {r.note}" for r in g.itertuples()
                                    if r.note and r.note != "not run"),
                   quality_metric=d.quality_metric.iloc[0] if len(d) else None, higher=model == "classifier")
        agg["final"] = t_interval(list(k * d.final_quality))
        agg["uplink_mb"] = t_interval(list(d.uplink_bytes / 1e6))
        agg["reduction"] = t_interval(list(d.uplink_reduction.dropna()))
        if method != "fedavg":
            diff = paired_difference(dict(zip(d.seed, k * d.final_quality)), dict(zip(ref.seed, k * ref.final_quality)))
            agg["vs_fedavg"], agg["verdict"] = diff, verdict(diff, lower_is_better=model != "classifier")
        t = d[d.reached.notna()]
        reached = t.reached.astype(bool)
        agg["to_target"] = "; ".join(f"{int(r)}" if ok else f"> {int(n)}"
                                     for r, ok, n in zip(t.rounds_to_target, reached, t.rounds))
        agg["rounds_mean"], agg["rounds_bound"] = censored_mean(reached, t.rounds_to_target, t.rounds + 1)
        agg["mb_mean"], agg["mb_bound"] = censored_mean(reached, t.bytes_to_target / 1e6, t.uplink_bytes / 1e6)
        agg["mb_to_target"] = t_interval(list(t.bytes_to_target / 1e6)) if reached.all() else None
        agg["censored"] = int((~reached).sum())
        agg["diverged"] = int(d.diverged.astype(bool).sum())
        agg["wall_s"] = float(d.wall_s.sum())
        out.append(agg)
    return pd.DataFrame(out)


def flat(agg: pd.DataFrame) -> pd.DataFrame:
    """summary.csv: each interval as mean, low, high."""
    return pd.DataFrame(flat_intervals(agg.to_dict("records")))
