"""The plots of experiments/bench_simulation.py: round time and peak PSS against the client count,
and the PSS of the process tree over time; one colour and line style per runner in every panel."""

from __future__ import annotations

from pathlib import Path

STYLES = {"plain": "s--", "fedsim": "o-", "flower-direct": "^:"}
COLORS = {"plain": "C0", "fedsim": "C1", "flower-direct": "C2"}  # the same in every panel


def plot_memory(traces: list[dict], path: Path) -> None:
    """PSS of the process tree over time, one panel per client count, one line per runner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({(t["clients"], t["per_round"]) for t in traces})
    fig, axes = plt.subplots(1, len(counts), figsize=(4.5 * len(counts), 3.4), squeeze=False)
    for ax, (n, k) in zip(axes[0], counts):
        for runner, style in STYLES.items():
            sel = [t for t in traces if (t["clients"], t["per_round"]) == (n, k) and t["runner"] == runner]
            if sel:
                ax.plot([t["t_s"] for t in sel], [t["pss_mb"] for t in sel], style.lstrip("so^"),
                        color=COLORS[runner], label=runner)
        ax.set_title(f"{n} clients, all every round" if n == k else f"{n} registered, {k} per round")
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("PSS of process tree (MB)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for runner, style in STYLES.items():
        sel = [r for r in rows if r["runner"] == runner and r["per_round"] == r["clients"]]
        for ax, key, label in ((axes[0], "round_s", "seconds per round"),
                               (axes[1], "peak_pss_mb", "peak PSS of process tree (MB)")):
            ax.plot([r["clients"] for r in sel], [r[key] for r in sel], style, color=COLORS[runner], label=runner)
            ax.set_xscale("log")
            ax.set_xlabel("simulated clients (all train every round)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle("fedsim vs a plain PyTorch loop and the job on Flower directly (same local work)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
