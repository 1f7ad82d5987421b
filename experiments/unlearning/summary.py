"""Unlearning experiment, the numbers: one row per (request, seed, model), then means with 95 %
t-intervals over seeds, paired differences against the fine-tune control, and the acceptance check.

Per row (results.csv): every score of fedsim/unlearning/report.py (forget rates on recognised
samples, unrecognised share, KID / FD with floors on the remaining classes, the calibrated
membership attack), the cost (wall_s, rounds, bytes) and the ratios to FedRetrain on the same
seed (wall_vs_retrain, bytes_vs_retrain, kid_vs_retrain, fd_vs_retrain). ``model`` is
"original", "retrain" or the method's name in experiment.toml.

Across seeds (summary.csv): per request and model, the mean and 95 % t-interval of each
column over the seeds that finished (n); for each method the paired per-seed difference of the
forget rate against ``fine-tune`` (the FT baseline: a method that does not beat it forgets no
more than training on the remaining data does) with its verdict.

The acceptance check (issue 17) for a class request, per method: mean forget rate <= 2 % and
the upper end of its interval <= 3 %, mean KID ratio to retrain <= 1.2, mean wall-time ratio
to retrain <= 0.25, and a forget rate below fine-tune's with a paired interval below zero.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from fedsim.records.stats import paired_difference, t_interval, verdict

SCORES = ["forget_rate", "forget_rate_cond", "unrecognised", "forget_prob", "kid_remaining", "kid_floor",
          "fd_remaining", "fd_floor", "precision", "recall", "eval_loss_remaining", "mia_auc", "mia_tpr_1fpr",
          "mia_loss_auc", "backdoor_acc", "clean_acc"]
COSTS = ["wall_s", "rounds", "bytes"]
RATIOS = {"wall_vs_retrain": "wall_s", "bytes_vs_retrain": "bytes", "kid_vs_retrain": "kid_remaining",
          "fd_vs_retrain": "fd_remaining"}
COLUMNS = ["request", "seed", "model", *SCORES, *COSTS, *RATIOS]
CONTROL = "fine-tune"
# the acceptance bounds of issue 17 (class requests)
MAX_RATE, MAX_RATE_HIGH, MAX_KID_RATIO, MAX_COST_RATIO = 0.02, 0.03, 1.2, 0.25
CLASS_METHODS = ("erasediff", "salun", "msgm")
RULE = (f"class requests; a method must forget to <= {MAX_RATE:.0%} with the interval's upper end <= "
        f"{MAX_RATE_HIGH:.0%}, keep KID within {MAX_KID_RATIO:g}x retrain's, cost <= {MAX_COST_RATIO:g}x retrain's "
        f"time, and beat {CONTROL} on the forget rate")


def read_reports(folders: dict[tuple[str, int, str], Path]) -> pd.DataFrame:
    """results.csv's rows from each (request, seed, method) run's unlearning/report.csv: the
    method's own row, and the original's and retrain's rows once per (request, seed)."""
    rows, seen = [], set()
    for (request, seed, method), folder in folders.items():
        path = folder / "unlearning" / "report.csv"
        if not path.is_file():
            continue
        for _, r in pd.read_csv(path).iterrows():
            label = r["model"] if r["model"] in ("original", "retrain") else method
            if label == "retrain" and method != "retrain":
                continue  # the retrain row comes from the retrain run's own report
            if (request, seed, label) in seen:
                continue
            seen.add((request, seed, label))
            rows.append({**r.to_dict(), "request": request, "seed": seed, "model": label})
    df = pd.DataFrame(rows).reindex(columns=COLUMNS)  # a score a report lacks is NaN
    ref = df[df.model == "retrain"].set_index(["request", "seed"])
    for name, col in RATIOS.items():
        df[name] = [r[col] / ref.loc[(r["request"], r["seed"]), col] if (r["request"], r["seed"]) in ref.index
                    else math.nan for r in df.to_dict("records")]
    return df


def across_seeds(df: pd.DataFrame, models: list[str], class_requests: set[str]) -> pd.DataFrame:
    """One row per request and model (original, retrain, then ``models`` in order): n, and each
    column's t-interval over seeds (col, col_low, col_high); for methods the paired difference
    of the forget rate against the control, and the acceptance check (``class_requests`` only)."""
    out = []
    for request, g in df.groupby("request", sort=False):
        control = g[g.model == CONTROL].set_index("seed")["forget_rate"].to_dict()
        for model in ["original", "retrain", *[m for m in models if m not in ("original", "retrain")]]:
            m = g[g.model == model]
            row = {"request": request, "model": model, "n": int(m.seed.nunique()),
                   "seeds": " ".join(str(int(s)) for s in sorted(m.seed.unique()))}
            for col in [*SCORES, *COSTS, *RATIOS]:
                ci = t_interval(m[col].astype(float).tolist())
                row.update({col: ci.mean, f"{col}_low": ci.low, f"{col}_high": ci.high})
            if model not in ("original", "retrain", CONTROL):
                diff = paired_difference(m.set_index("seed")["forget_rate"].to_dict(), control)
                row.update(vs_control=diff.mean, vs_control_low=diff.low, vs_control_high=diff.high,
                           vs_control_n=diff.n, vs_control_verdict=verdict(diff, lower_is_better=True))
            row["accepted"] = accepted(row) if request in class_requests else ""
            out.append(row)
    return pd.DataFrame(out)


def accepted(row: dict) -> str:
    """'' for rows the check does not apply to, 'not run', else 'yes' or every bound it misses."""
    if row.get("vs_control_n") is None or not any(row["model"].startswith(m) for m in CLASS_METHODS):
        return ""
    if row.get("n") == 0:
        return "not run"
    few = row.get("n", 2) < 2  # one seed: no interval, and no paired verdict
    checks = [(row["forget_rate"] <= MAX_RATE, f"forget rate > {MAX_RATE:.0%}"),
              (not few and row["forget_rate_high"] <= MAX_RATE_HIGH,
               "n < 2, no interval" if few else f"forget rate's upper end > {MAX_RATE_HIGH:.0%}"),
              (row["kid_vs_retrain"] <= MAX_KID_RATIO, f"KID > {MAX_KID_RATIO:g}x retrain's"),
              (row["wall_vs_retrain"] <= MAX_COST_RATIO, f"cost > {MAX_COST_RATIO:g}x retrain's"),
              (row.get("vs_control_verdict") == "better", "not better than fine-tune")]
    missed = [why for ok, why in checks if not ok]  # NaN compares False: a missing number fails
    return "no: " + "; ".join(missed) if missed else "yes"
