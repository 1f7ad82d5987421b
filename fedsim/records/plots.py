"""curves.png from metrics.csv: losses, generation quality and traffic per round."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


PANELS = [  # (title, columns); a column's "<name>_floor" is drawn dashed in the same colour
    ("loss", ["train_loss", "eval_loss"]),
    ("samples (share)", ["recognised", "precision", "recall"]),
    ("FD, evaluator features", ["fd"]),
    ("KID, evaluator features", ["kid"]),
    ("test accuracy", ["test_acc"]),
    ("uplink MB", ["bytes_up"]),
]


def plot_curves(metrics_csv: Path, out_png: Path) -> None:
    df = pd.read_csv(metrics_csv)
    panels = [(t, [c for c in cols if c in df and df[c].notna().any()]) for t, cols in PANELS]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (title, cols) in zip(axes[0], panels):
        for c in cols:
            d = df[["round", c]].dropna()
            y = d[c].cumsum() / 1e6 if c == "bytes_up" else d[c]
            line, = ax.plot(d["round"], y, marker="o", ms=3, label=c + (" (cumulative)" if c == "bytes_up" else ""))
            floor = f"{c}_floor"
            if floor in df and df[floor].notna().any():
                f = df[["round", floor]].dropna()
                ax.plot(f["round"], f[floor], ls="--", color=line.get_color(), alpha=0.7,
                        label=f"{c}: real vs real")
        ax.set_xlabel("round")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def plot_selection(metrics_csv: Path, out_png: Path) -> bool:
    """selection.png for runs with Maverick clients: each Maverick's selection probability
    P_t and the median of the other clients' (left), times each was selected (right).
    Returns False (and writes nothing) when the run has no Maverick columns."""
    df = pd.read_csv(metrics_csv)
    probs = [c for c in df if c.startswith("maverick_") and c.endswith("_prob")]
    if not probs or df.empty:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for c in probs:
        name = c.removesuffix("_prob").replace("_", " ")
        left.plot(df["round"], df[c], label=name)
        right.plot(df["round"], df[c.removesuffix("_prob") + "_selections"], label=name)
    if "typical_prob" in df:
        left.plot(df["round"], df["typical_prob"], color="grey", ls="--", label="typical client (median)")
    left.set(xlabel="round", ylabel="selection probability $P_t$", title="who the selector prefers")
    right.set(xlabel="round", ylabel="times selected", title="Maverick participation")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return True
