"""Unlearning experiment, the report: results.md (a header, then one table per request, the
acceptance check) and grids_<request>.png, from summary.py's rows; nothing here computes a score."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

CONTROL = "fine-tune"  # the control each method's forget rate is paired with (summary.py)

# (column, header, scale, digits): percentages for rates, ratios as they are
SHOWN = [("forget_rate", "forget rate, %", 100, 2), ("forget_rate_cond", "cond. forget rate, %", 100, 2),
         ("unrecognised", "unrecognised, %", 100, 2), ("kid_remaining", "KID", 1, 3),
         ("kid_vs_retrain", "KID / retrain", 1, 2), ("fd_remaining", "FD", 1, 3),
         ("mia_auc", "MIA AUC", 1, 3), ("wall_vs_retrain", "time / retrain", 1, 2),
         ("bytes_vs_retrain", "bytes / retrain", 1, 2)]
BACKDOOR = [("backdoor_acc", "backdoor acc, %", 100, 2), ("clean_acc", "clean acc, %", 100, 3)]


def _num(x: float, digits: int) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def cell(row, col: str, scale: float, digits: int) -> str:
    """"mean [low, high]" over seeds; the mean alone with one seed."""
    mean, low, high = (float(row[f"{col}{s}"]) * scale for s in ("", "_low", "_high"))
    if math.isnan(low):
        return _num(mean, digits)
    return f"{_num(mean, digits)} [{_num(low, digits)}, {_num(high, digits)}]"


def header(rows: pd.DataFrame, seeds: list[int], tuning_seed: int, samples: int, planned: int) -> str:
    finished = rows.groupby(["request", "seed"]).model.nunique().sum() if len(rows) else 0
    first = (f"Tuning seed {tuning_seed}: the runs that settings are chosen on (calibration.md); no report seed."
             if seeds == [tuning_seed] else
             f"Report seeds {', '.join(map(str, seeds))}; settings were chosen on seed {tuning_seed} only (its own "
             "partition, initial weights and sampling noise), never a report seed (calibration.md).")
    return "\n\n".join([
        first,
        f"Each cell: mean [95 % t-interval] over the seeds that finished (n). Scores from {samples} generated "
        "samples per model: forget rates count recognised samples only (the evaluator's reject option); KID and "
        "FD on the remaining classes, with the real-vs-real floor in results.csv; the membership attack is the "
        "calibrated one (fedsim/unlearning/membership.py). Ratios are to FedRetrain on the same seed.",
        f"vs {CONTROL}: the paired per-seed difference of the forget rate (points) against the fine-tune control; "
        "\"better\" only when its interval lies below zero.",
        f"Finished: {finished} of {planned} planned models (original and retrain included)."])


def table(summary: pd.DataFrame, request: str) -> str:
    s = summary[summary.request == request]
    shown = SHOWN + [b for b in BACKDOOR if s[b[0]].notna().any()]
    lines = ["| model | n | " + " | ".join(h for _, h, _, _ in shown) + f" | forget rate vs {CONTROL}, pt |",
             "|---|---|" + "---|" * (len(shown) + 1)]
    for r in s.to_dict("records"):
        if r["n"] == 0:
            lines.append(f"| {r['model']} | 0 | not run |" + " |" * len(shown))
            continue
        vs = ""
        if not math.isnan(r.get("vs_control", math.nan)):
            vs = (f"{100 * r['vs_control']:+.2g} [{100 * r['vs_control_low']:+.2g}, {100 * r['vs_control_high']:+.2g}]"
                  f", {r['vs_control_verdict']}" if r["vs_control_n"] >= 2 else f"{100 * r['vs_control']:+.2g}")
        lines.append(f"| {r['model']} | {r['n']} | " + " | ".join(cell(r, c, k, d) for c, _, k, d in shown)
                     + f" | {vs} |")
    return "\n".join(lines)


def acceptance(summary: pd.DataFrame, rule: str) -> str:
    rows = summary[summary.accepted.astype(str) != ""]
    if rows.empty:
        return ""
    lines = [f"Acceptance ({rule}):", ""]
    lines += [f"- {r.request} / {r.model}: {r.accepted}" for r in rows.itertuples()]
    if not (rows.accepted == "yes").any():
        lines += ["", "No method meets every bound."]
    return "\n".join(lines)


def markdown(rows: pd.DataFrame, summary: pd.DataFrame, seeds: list[int], tuning_seed: int, samples: int,
             planned: int, rule: str = "") -> str:
    parts = [header(rows, seeds, tuning_seed, samples, planned)]
    if summary.empty:
        return parts[0] + "\n\nNo run has finished yet.\n"
    for request in dict.fromkeys(summary.request):
        parts.append(f"**{request}**\n\n{table(summary, request)}")
    if text := acceptance(summary, rule):
        parts.append(text)
    return "\n\n".join(parts) + "\n"


def grids(out: Path, panels: dict[str, list[tuple[str, Path, float]]]) -> None:
    """grids_<request>.png: each model's sample grid (one seed), titled with its forget rate."""
    for request, found in panels.items():
        found = [p for p in found if p[1].is_file()]
        if not found:
            continue
        ncol = min(5, len(found))
        nrow = -(-len(found) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.9 * nrow), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, (label, path, rate) in zip(axes.flat, found):
            ax.imshow(Image.open(path), cmap="gray")
            ax.set_title(f"{label}\nforget rate {rate:.1%}", fontsize=9)
        fig.suptitle(f"{request}: samples before / after unlearning", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / f"grids_{request}.png", dpi=110)
        plt.close(fig)
