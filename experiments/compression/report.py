"""Compression experiment, the report: results.md (a header, then one table per model) and
quality_vs_bytes.png, both from summary.py's rows; nothing here reads a run folder."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from fedsim.records.stats import Interval


def _num(x, fmt: str = "g") -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{fmt}}"


def _iv(x, digits: int = 3, signed: bool = False) -> str:
    return x.fmt(digits, signed=signed) if isinstance(x, Interval) else "–"


def header(rows: pd.DataFrame, seeds: list[int], tuning_seed: int, window: int, extra: dict | None = None) -> str:
    """Who the numbers are about: seeds, intervals, target, censoring, wall time, missing runs."""
    done = rows[rows.note == ""]
    elapsed = done.elapsed_s.dropna()
    failed = rows[(rows.note != "") & (rows.note != "not run")]
    missing = len(rows) - len(done)
    lines = [
        f"Report seeds {', '.join(map(str, seeds))} (n in each cell counts the seeds that finished). "
        f"Learning rate, local epochs and the round budget were chosen on seed {tuning_seed} only, "
        "which is not a report seed.",
        f"Final quality: mean of the last {window} rounds. Intervals: mean ± half-width of the 95 % t-interval "
        "over seeds. vs FedAvg: the paired per-seed difference; \"not significant\" when its interval contains 0.",
        "Target: 99 % of FedAvg's final accuracy on the same seed (101 % of its eval loss), met by the 3-round "
        "moving average. \"> R\": not met within the R-round budget (censored); a mean over censored runs is a "
        "lower bound (≥), counting them as R + 1 rounds and their total uplink.",
        "Diverged: runs whose eval loss became non-finite or rose above 100x its round-1 value (training blew "
        "up and the model fell to chance); a cell with diverged runs, or whose FedAvg diverged, compares "
        "blow-ups, not codecs.",
        f"Wall time: {len(done)} finished runs, {done.wall_s.sum() / 3600:.2f} h in rounds (sum of metrics.csv "
        "wall_s)" + (f"; {elapsed.sum() / 3600:.2f} h with start-up for the {len(elapsed)} runs timed by run.py"
                     if len(elapsed) else "") + f". Missing: {missing} of {len(rows)} planned runs"
        + (f" ({len(failed)} failed: " + "; ".join(f"{r.method} {r.partition} seed {r.seed}: {r.note}"
                                                   for r in failed.itertuples()) + ")" if len(failed) else "") + ".",
    ]
    if extra:
        lines.append("Settings added to every run (run.py --set): "
                     + ", ".join(f"{k} = {v}" for k, v in extra.items()) + ".")
    return "\n\n".join(lines)


def table(summary: pd.DataFrame, model: str) -> str:
    """Markdown table of one model's summary rows."""
    acc = model == "classifier"
    q, d = ("final accuracy, %", "vs FedAvg, pt (paired)") if acc else ("final eval loss", "vs FedAvg (paired)")
    lines = [f"| partition | method | p | L / s | K_t | {q} | {d} | uplink MB | uplink reduction, x | "
             "rounds to target, per seed | mean rounds to target | uplink MB to target | diverged |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary[summary.model == model].itertuples():
        kt = f"{int(r.k_start)}" if r.sampling == "constant" else f"{int(r.k_start)}→{int(r.k_min)}"
        if r.n == 0:
            lines.append(f"| {r.partition} | {r.method} | {_num(r.keep_ratio)} | {_num(r.levels, '.0f')} | {kt} | "
                         f"{'failed: ' + r.failed if r.failed else 'not run'} | | | | | | | |")
            continue
        vs = "reference" if r.method == "fedavg" else "no FedAvg on these seeds" if r.vs_fedavg.n == 0 else \
            f"{_iv(r.vs_fedavg, 2, signed=True)}, {r.verdict}"
        if not r.to_target:
            rounds = mb = "no FedAvg on these seeds"
            mean = ""
        else:
            rounds = r.to_target
            mean = ("≥ " if r.rounds_bound else "") + f"{r.rounds_mean:.1f}"
            mb = _iv(r.mb_to_target) if isinstance(r.mb_to_target, Interval) else \
                f"≥ {r.mb_mean:.3g} ({r.censored} of {r.n} > budget)"
        lines.append(f"| {r.partition} | {r.method} | {_num(r.keep_ratio)} | {_num(r.levels, '.0f')} | {kt} | "
                     f"{_iv(r.final)} | {vs} | {_iv(r.uplink_mb)} | {_iv(r.reduction)} | {rounds} | {mean} | {mb} | "
                     f"{r.diverged} of {r.n} |")
    return "\n".join(lines)


def markdown(rows: pd.DataFrame, summary: pd.DataFrame, seeds: list[int], tuning_seed: int, window: int,
             extra: dict | None = None) -> str:
    parts = [header(rows, seeds, tuning_seed, window, extra)]
    for model in dict.fromkeys(summary.model):
        parts.append(f"**{model}**\n\n{table(summary, model)}")
    return "\n\n".join(parts) + "\n"


def plot(path: Path, rows: pd.DataFrame, summary: pd.DataFrame) -> None:
    """Final quality against total uplink MB: each seed a thin dot, each method's mean with
    its 95 % t-interval as error bars (x and y); one panel per model and partition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    done = rows[rows.note == ""]
    ran = summary[summary.n > 0]
    panels = list(dict.fromkeys(zip(ran.model, ran.partition)))
    cols = min(2, max(1, len(panels)))
    nrows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols, 4.6 * nrows), squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    methods = list(dict.fromkeys(summary.method))  # one colour per method in every panel
    colors = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20").colors
    for ax, (model, partition) in zip(axes.ravel(), panels):
        k = 100.0 if model == "classifier" else 1.0
        for r in ran[(ran.model == model) & (ran.partition == partition)].itertuples():
            c = colors[methods.index(r.method) % len(colors)]
            d = done[(done.model == model) & (done.partition == partition) & (done.method == r.method)]
            ax.scatter(d.uplink_bytes / 1e6, k * d.final_quality, s=9, color=c, alpha=0.35, lw=0)

            def err(iv: Interval) -> float:
                return 0.0 if math.isnan(iv.half_width) else iv.half_width

            ax.errorbar(r.uplink_mb.mean, r.final.mean, xerr=err(r.uplink_mb), yerr=err(r.final), fmt="o",
                        ms=5, color=c, capsize=3, lw=1.2, label=f"{r.method} (n = {r.n})")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set(title=f"{model}, {partition}", xlabel="uplink MB per run (measured, log)",
               ylabel="final test accuracy, %" if model == "classifier" else "final eval loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
