"""Strategies experiment, the report: results.md (a header, one table per model) and curves.png
(each method's per-round quality, mean over seeds, one panel per model and panel name), both
from what summary.py computed; nothing here reads a run folder."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from fedsim.records.stats import Interval


def _iv(x, digits: int = 3, signed: bool = False) -> str:
    return x.fmt(digits, signed=signed) if isinstance(x, Interval) else "–"


def header(rows: pd.DataFrame, spec: dict, seeds: list[int], extra: dict) -> str:
    done = rows[rows.note == ""]
    failed = rows[(rows.note != "") & (rows.note != "not run")]
    targets = ", ".join(f"{m}: {'accuracy ≥ ' + format(100 * t, 'g') + ' %' if m == 'classifier' else 'eval loss ≤ ' + format(t, 'g')}"
                        for m, t in spec["targets"].items())
    lines = [
        f"Seeds {', '.join(map(str, seeds))} (n in each cell counts the seeds that finished); settings chosen on seed "
        f"{spec['tuning-seed']} only. Intervals: mean ± half-width of the 95 % t-interval over seeds. \"vs\" is the "
        "paired per-seed difference from the method's reference; \"not significant\" when its interval contains 0.",
        f"Final: mean of the last {spec['final-window']} rounds. Rounds to target ({targets}): the first round whose "
        "3-round moving average meets it; \"> R\" when not met in the R rounds (a mean over such runs counts them as "
        "R + 1: a lower bound, ≥).",
        f"{len(done)} of {len(rows)} planned runs finished ({done.wall_s.sum() / 3600:.2f} h in rounds)"
        + (f"; failed: " + "; ".join(f"{r.method} seed {r.seed}: {r.note}" for r in failed.itertuples())
           if len(failed) else "") + ".",
    ]
    if extra:
        lines.append("Settings added to every run: " + ", ".join(f"{k} = {v}" for k, v in extra.items()) + ".")
    return "\n\n".join(lines)


def table(agg: pd.DataFrame, model: str) -> str:
    g = agg[agg.model == model]
    backdoor = g.backdoor.notna().any()
    if model == "classifier":
        head = ["method", "final accuracy, %", "vs reference, pt (paired)"] + \
               (["backdoor success, %"] if backdoor else []) + ["rounds to target, per seed", "mean rounds",
                                                                "uplink MB", "diverged"]
    else:
        head = ["method", "final eval loss", "vs reference (paired)", "recognised, %", "FD (floor)", "KID (floor)",
                "rounds to target, per seed", "mean rounds", "uplink MB", "diverged"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in g.itertuples():
        if r.n == 0:
            lines.append(f"| {r.method} | {'failed: ' + r.failed if r.failed else 'not run'} |" + " |" * (len(head) - 2))
            continue
        vs = "reference" if r.verdict == "reference" else \
            f"vs {r.reference}: {_iv(r.vs_reference, 2, signed=True)}, {r.verdict}"
        mean = ("≥ " if r.rounds_bound else "") + f"{r.rounds_mean:.1f}"
        cells = [r.method, _iv(r.final), vs]
        if model == "classifier":
            cells += [_iv(r.backdoor)] if backdoor else []
        else:
            floor = lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else f" ({v:.3g})"  # noqa: E731
            cells += [_iv(r.recognised), _iv(r.fd) + floor(r.fd_floor), _iv(r.kid) + floor(r.kid_floor)]
        cells += [r.to_target, mean, _iv(r.uplink_mb), f"{r.diverged} of {r.n}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(rows: pd.DataFrame, agg: pd.DataFrame, spec: dict, seeds: list[int], extra: dict) -> str:
    parts = [header(rows, spec, seeds, extra)]
    for model in dict.fromkeys(agg.model):
        parts.append(f"**{model}**\n\n{table(agg, model)}")
    return "\n\n".join(parts) + "\n"


def curves(path: Path, series: dict) -> None:
    """summary.curve_data's series: one panel per (model, panel name), a line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not series:
        return
    panels = list(series)
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.8 * nrows), squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    for ax, (model, panel) in zip(axes.ravel(), panels):
        for method, ss in series[(model, panel)].items():
            mean = pd.concat(ss, axis=1).mean(axis=1)
            ax.plot(mean.index, mean.values, lw=1.4, label=f"{method} (n = {len(ss)})")
        ax.set(title=f"{model}{', ' + panel if panel else ''}", xlabel="round",
               ylabel="test accuracy, %" if model == "classifier" else "eval loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
