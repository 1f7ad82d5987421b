"""curves.png from metrics.csv: losses, generation quality and traffic per round."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def plot_curves(metrics_csv: Path, out_png: Path) -> None:
    df = pd.read_csv(metrics_csv)
    panels = [("loss", ["train_loss", "eval_loss"]), ("quality", ["fd", "test_acc"]),
              ("uplink MB", ["bytes_up"])]
    panels = [(t, [c for c in cols if c in df and df[c].notna().any()]) for t, cols in panels]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (title, cols) in zip(axes[0], panels):
        for c in cols:
            d = df[["round", c]].dropna()
            y = d[c].cumsum() / 1e6 if c == "bytes_up" else d[c]
            ax.plot(d["round"], y, marker="o", ms=3, label=c + (" (cumulative)" if c == "bytes_up" else ""))
        ax.set_xlabel("round")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
