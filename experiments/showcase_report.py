"""Summarise a finished showcase run for the docs: its last sample grid, its curves, and a table.

    fedsim run experiments/showcase.toml --out runs/showcase
    python experiments/showcase_report.py runs/showcase --out docs/showcase

Writes OUT/samples.png (the last quality round's grid), OUT/curves.png, OUT/recognised.png
(recognised share and label match per quality round) and OUT/summary.md: per quality round
the recognised share with its Wilson interval, the label match, the largest class share of the
recognised samples, FD / KID / precision / recall beside their real-vs-real floors, and the
run's wall time. One run, one seed: the intervals are over samples, not over seeds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fedsim.records.stats import wilson  # noqa: E402


def summary(run: Path) -> tuple[pd.DataFrame, str]:
    df = pd.read_csv(run / "metrics.csv")
    num_samples = _num_samples(run)
    quality = df.dropna(subset=["recognised"])
    classes = [c for c in df if c.startswith("gen_class_")]
    lines = ["| round | minutes so far | recognised [95 % Wilson] | label match | classes recognised | "
             "largest class share | FD (floor) | KID (floor) | precision (floor) | recall (floor) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    minutes = df["wall_s"].cumsum() / 60
    for _, r in quality.iterrows():
        rec = wilson(round(r["recognised"] * num_samples), num_samples)
        shares = r[classes].astype(float)
        present = int((shares > 0).sum())
        largest = float(shares.max() / r["recognised"]) if r["recognised"] > 0 else float("nan")
        match = f"{r['label_match']:.1%}" if "label_match" in r and pd.notna(r["label_match"]) else "–"
        lines.append(
            f"| {int(r['round'])} | {minutes[r.name]:.1f} | {rec.mean:.1%} [{rec.low:.1%}, {rec.high:.1%}] | {match} | "
            f"{present} of {len(classes)} | {largest:.1%} | {r['fd']:.3g} ({r['fd_floor']:.3g}) | "
            f"{r['kid']:.3g} ({r['kid_floor']:.3g}) | {r['precision']:.2f} ({r['precision_floor']:.2f}) | "
            f"{r['recall']:.2f} ({r['recall_floor']:.2f}) |")
    total = df["wall_s"].sum() / 60
    lines.append("")
    lines.append(f"{len(df)} rounds, {num_samples} samples per quality round; run time {total:.1f} min "
                 "(sum of the rounds' wall_s, start-up of Flower and Ray excluded).")
    return quality, "\n".join(lines) + "\n"


def _num_samples(run: Path) -> int:
    import tomllib

    return int(tomllib.loads((run / "config.toml").read_text()).get("num-samples", 256))


def plot(quality: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(quality["round"], quality["recognised"], marker="o", label="recognised")
    if "label_match" in quality:
        ax.plot(quality["round"], quality["label_match"], marker="s", label="recognised as the class asked for")
    ax.axhline(0.8, color="grey", ls=":", label="target 80 %")
    ax.set(xlabel="round", ylabel="share of samples", ylim=(0, 1), title="showcase: what the evaluator recognises")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a finished run folder of experiments/showcase.toml")
    ap.add_argument("--out", required=True, help="output folder (docs/showcase)")
    args = ap.parse_args(argv)
    run, out = Path(args.run), Path(args.out)
    if not (run / "metrics.csv").is_file():
        print(f"showcase_report: error: {run} has no metrics.csv", file=sys.stderr)
        return 2
    quality, md = summary(run)
    if quality.empty:
        print(f"showcase_report: error: {run} has no quality rounds yet", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    last = int(quality["round"].iloc[-1])
    shutil.copyfile(run / "samples" / f"round_{last:03d}.png", out / "samples.png")
    if (run / "curves.png").is_file():
        shutil.copyfile(run / "curves.png", out / "curves.png")
    plot(quality, out / "recognised.png")
    (out / "summary.md").write_text(md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
