"""FedEMD experiment: rounds to 99 % of random selection's best accuracy (R@99), offline.

Reproduces the setting of Huang et al., "Maverick Matters" (PAKDD 2023), on the
bundled digits (see base.toml): small CNN, 50 clients, 5 per round, one exclusive
Maverick (exclusive-1) and two (exclusive-2), FedAvg, for every selector of
experiment.toml and every seed. Each run is a real ``fedsim run`` (Flower
simulation), its folder kept under DIR/runs/. Then the same selectors on a
diffusion run (diffusion.toml): the first round at which the Maverick's class
appears in the generated samples at its share of the training data.

Writes to DIR:
  r99.csv        selector, mavericks, seed, r99, reached, final_acc, best_acc, maverick_selections, note
  r99.md         the table for the README (mean R@99 over seeds, improvement over random)
  accuracy.png   test accuracy per round, mean over seeds, one panel per Maverick setting
  selection.png  the Maverick's selection probability per round for each selector (seed 0)
  diffusion.csv  selector, seed, share, rounds_to_share, final_share
Runs already finished in DIR/runs are reused, so an interrupted experiment resumes.

    python experiments/fedemd/run.py --out DIR [--seeds N] [--rounds R] [--skip-diffusion]
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.cli.sweep import fedsim_run, is_done

HERE = Path(__file__).resolve().parent


def run_folder(out: Path, *parts: str) -> Path:
    return out.joinpath("runs", *parts)


def r99(acc: np.ndarray, target: float) -> int | None:
    """First round (1-based) with accuracy >= target, None if never."""
    hit = np.flatnonzero(acc >= target)
    return int(hit[0]) + 1 if hit.size else None


def summarise(out: Path, spec: dict, seeds: int, rounds: int) -> pd.DataFrame:
    rows = []
    for mav in spec["mavericks"]:
        for seed in range(seeds):
            curves = {}
            for name in spec["selectors"]:
                folder = run_folder(out, mav, name, f"seed{seed}")
                if is_done(folder):
                    curves[name] = pd.read_csv(folder / "metrics.csv")
            if "random" not in curves:
                continue
            target = 0.99 * curves["random"]["test_acc"].max()
            for name in spec["selectors"]:
                folder = run_folder(out, mav, name, f"seed{seed}")
                if name not in curves:
                    note = (folder / "error.txt").read_text().strip() if (folder / "error.txt").exists() else "not run"
                    rows.append(dict(selector=name, mavericks=mav, seed=seed, note=note))
                    continue
                df = curves[name]
                r = r99(df["test_acc"].to_numpy(), target)
                sel = [c for c in df if c.endswith("_selections")]
                rows.append(dict(selector=name, mavericks=mav, seed=seed,
                                 r99=r if r is not None else rounds + 1, reached=r is not None,
                                 final_acc=float(df["test_acc"].iloc[-1]), best_acc=float(df["test_acc"].max()),
                                 maverick_selections=" ".join(str(int(df[c].iloc[-1])) for c in sel), note=""))
    return pd.DataFrame(rows)


def table(df: pd.DataFrame, spec: dict, rounds: int) -> str:
    lines = ["| Mavericks | selector | R@99 per seed | mean R@99 | fewer rounds than random | final acc | "
             "Maverick selected (per seed) |", "|---|---|---|---|---|---|---|"]
    for mav, g in df.groupby("mavericks", sort=False):
        ok = g[g.note == ""]
        base = ok[ok.selector == "random"].r99.mean()
        for name in spec["selectors"]:
            s = g[g.selector == name]
            if s.empty:
                continue
            if (s.note != "").all():
                lines.append(f"| {mav} | {name} | not defined: {s.note.iloc[0]} | | | | |")
                continue
            s = s[s.note == ""]
            per_seed = ", ".join(str(int(r)) if ok_ else f">{rounds}" for r, ok_ in zip(s.r99, s.reached))
            mean = s.r99.mean()
            bound = "≥ " if not s.reached.all() else ""
            gain = "" if name == "random" else f"{100 * (base - mean) / base:+.1f} %"
            lines.append(f"| {mav} | {name} | {per_seed} | {bound}{mean:.1f} | {gain} | {s.final_acc.mean():.3f} | "
                         f"{'; '.join(s.maverick_selections)} |")
    return "\n".join(lines)


def save(fig, axes, path: Path, legend_size: int = 8) -> None:
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy(out: Path, spec: dict, seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mavs = spec["mavericks"]
    fig, axes = plt.subplots(1, len(mavs), figsize=(5 * len(mavs), 3.6), squeeze=False)
    for ax, mav in zip(axes[0], mavs):
        for name in spec["selectors"]:
            runs = [pd.read_csv(run_folder(out, mav, name, f"seed{s}") / "metrics.csv")
                    for s in range(seeds) if is_done(run_folder(out, mav, name, f"seed{s}"))]
            if not runs:
                continue
            acc = np.mean([r["test_acc"].to_numpy() for r in runs], axis=0)
            ax.plot(np.arange(1, len(acc) + 1), acc, label=f"{name} ({len(runs)} seeds)")
        ax.set(title=f"digits, 50 clients, {mav}", xlabel="round", ylabel="test accuracy (mean over seeds)")
    save(fig, axes[0], out / "accuracy.png")


def plot_selection(out: Path, spec: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mav = spec["mavericks"][0]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name in spec["selectors"]:
        folder = run_folder(out, mav, name, "seed0")
        if not is_done(folder):
            continue
        df = pd.read_csv(folder / "metrics.csv")
        col = next((c for c in df if c.startswith("maverick_") and c.endswith("_prob")), None)
        if col is None:
            continue
        line, = ax.plot(df["round"], df[col], label=f"{name}: Maverick")
        ax.plot(df["round"], df["typical_prob"], ls="--", color=line.get_color(), alpha=0.6,
                label=f"{name}: typical client (median)")
    ax.set(title=f"selection probability per draw, {mav}, seed 0", xlabel="round", ylabel="$P_t$")
    save(fig, [ax], out / "selection.png", legend_size=7)


def diffusion_rows(out: Path, spec: dict, seeds: int) -> pd.DataFrame:
    """First quality round at which gen_class_<maverick class> >= that class's share of the train split."""
    from fedsim.config import load_config, read_toml
    from fedsim.data.clients import dataset

    base = read_toml(HERE / "diffusion.toml")
    cfg = load_config(base)
    labels = dataset(cfg, "train").labels
    share = float(np.mean(labels == cfg.maverick_class))
    col = f"gen_class_{cfg.maverick_class}"
    rows = []
    for name in spec["selectors"]:
        for seed in range(seeds):
            folder = run_folder(out, "diffusion", name, f"seed{seed}")
            if not is_done(folder):
                continue
            df = pd.read_csv(folder / "metrics.csv").dropna(subset=[col])
            hit = df[df[col] >= share]
            rows.append(dict(selector=name, seed=seed, share=round(share, 4),
                             rounds_to_share=int(hit["round"].iloc[0]) if len(hit) else None,
                             final_share=float(df[col].iloc[-1]), fd=float(df["fd"].iloc[-1])))
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (runs/ inside it is reused on resume)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per setting (default: experiment.toml)")
    ap.add_argument("--rounds", type=int, default=None, help="round budget (default: experiment.toml)")
    ap.add_argument("--config", default=str(HERE / "experiment.toml"))
    ap.add_argument("--skip-diffusion", action="store_true")
    ap.add_argument("--report", action="store_true", help="only rebuild tables and plots from finished runs")
    args = ap.parse_args(argv)
    spec = tomllib.loads(Path(args.config).read_text())
    seeds = args.seeds or spec["seeds"]
    rounds = args.rounds or spec["rounds"]
    if "random" not in spec["selectors"]:
        print("fedemd: error: experiment.toml needs a 'random' selector (the R@99 reference)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(HERE / "base.toml", {**over, "partition": mav, "seed": seed, "rounds": rounds},
             run_folder(out, mav, name, f"seed{seed}"))
            for mav in spec["mavericks"] for seed in range(seeds) for name, over in spec["selectors"].items()]
    if not args.skip_diffusion:
        jobs += [(HERE / "diffusion.toml", {**over, "seed": seed}, run_folder(out, "diffusion", name, f"seed{seed}"))
                 for seed in range(spec["diffusion-seeds"]) for name, over in spec["selectors"].items()
                 if over.get("fedemd-distance") != "scipy-values"]
    t0 = time.perf_counter()
    for i, (config, over, folder) in enumerate([] if args.report else jobs, 1):
        error = fedsim_run(config, over, folder)
        if error:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "error.txt").write_text(error + "\n")
        done = time.perf_counter() - t0
        print(f"[{i}/{len(jobs)}] {folder.relative_to(out / 'runs')}: {'failed: ' + error if error else 'done'} "
              f"(elapsed {done / 60:.1f} min, ETA {done / i * (len(jobs) - i) / 60:.1f} min)", flush=True)
    df = summarise(out, spec, seeds, rounds)
    df.to_csv(out / "r99.csv", index=False)
    md = table(df, spec, rounds) if not df.empty else "(no finished runs)"
    (out / "r99.md").write_text(md + "\n")
    plot_accuracy(out, spec, seeds)
    plot_selection(out, spec)
    print(md)
    if not args.skip_diffusion:
        diff = diffusion_rows(out, spec, spec["diffusion-seeds"])
        diff.to_csv(out / "diffusion.csv", index=False)
        print(diff.to_string(index=False) if not diff.empty else "(no finished diffusion runs)")
    print(f"wrote r99.csv, r99.md, accuracy.png, selection.png to {out} "
          f"({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
