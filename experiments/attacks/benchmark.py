"""Privacy benchmark: every attack x batch size x local steps x defense, on the bundled datasets.

Reads experiments/attacks/benchmark.toml, runs each cell through attacks/runner.py (the code
behind ``fedsim attack``), then the GIDM phase comparison, and writes to --out
(default docs/attacks): benchmark.csv (per cell x trial the attack's row and the rows of the
trivial baselines scored on the same targets: baseline-grey, baseline-mean, baseline-random),
benchmark.md (the table for the README, iteration counts and baseline PSNRs included),
benchmark.png (PSNR per attack and setting, the mean-image baseline marked).
About 30 minutes on a 2-core CPU. benchmark_compressed.toml runs a subset against
DHQ-compressed updates (the decoded update a compressed federation's server records).
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd

from attacks.config import load_attack_config
from attacks.runner import run_attack

HERE = Path(__file__).resolve().parent
CLASSIFIER = ("dlg", "idlg", "ig", "simulation", "agic")
BASELINE = "baseline-"  # attacks/runner.py writes rows baseline-grey / -mean / -random after each trial's row


def cells(spec: dict):
    for name, table in spec["attacks"].items():
        base = spec["classifier" if name in CLASSIFIER else "diffusion"]
        for steps in spec["local-steps"]:
            for batch in spec["batch-sizes"]:
                for defense in spec["defenses"]:
                    yield name, {**base, "attack": name, "batch-size": batch, "local-steps": steps,
                                 "defense": defense, "trials": spec["trials"], "seed": spec["seed"],
                                 "threat": dict(table.get("threat", {})), "options": dict(table.get("options", {}))}


def phase_cells(spec: dict):
    p = spec["phases"]
    base = {**spec["diffusion"], "attack": "gidm", "batch-size": p["batch-size"], "trials": p["trials"],
            "seed": spec["seed"], "threat": {"eps-known": True, "t-known": True}}
    total = p["latent-iterations"] + p["pixel-iterations"]
    yield "pixel only (L2 matching, Adam)", {**base, "options": {"phases": "pixel", "pixel-iterations": total}}
    yield "phase 1 only (latent)", {**base, "options": {"phases": "latent", "latent-iterations": total}}
    yield "phase 1 + 2 (GIDM)", {**base, "options": {"latent-iterations": p["latent-iterations"],
                                                      "pixel-iterations": p["pixel-iterations"]}}
    yield "GIDM, wrong t (t + 8 mod 16)", {**base, "options": {"latent-iterations": p["latent-iterations"],
                                                                "pixel-iterations": p["pixel-iterations"],
                                                                "t-offset": 8}}
    yield "GIDM+ (eps, t private)", {**base, "attack": "gidm_plus", "threat": {},
                                     "options": {**spec["attacks"]["gidm_plus"]["options"],
                                                 "latent-iterations": p["latent-iterations"],
                                                 "pixel-iterations": p["pixel-iterations"]}}


def iterations_of(options: dict) -> str:
    keys = [k for k in ("iterations", "probe-iterations", "latent-iterations", "pixel-iterations") if k in options]
    return ", ".join(f"{k.replace('-iterations', '') if k != 'iterations' else 'it'} {options[k]}" for k in keys)


def fmt(v, spec=".2f") -> str:
    return "" if v is None or pd.isna(v) else format(v, spec)


def _of_defense(g: pd.DataFrame, defense: str) -> pd.DataFrame:
    """Rows of one defense; a compression defense is stored as its codec spec, e.g. dhq(p=0.05,L=4)."""
    return g[(g.defense == defense) | g.defense.astype(str).str.startswith(defense + "(")]


def _defense_label(df: pd.DataFrame, defense: str) -> str:
    if defense == "dp":
        return "DP"
    specs = _of_defense(df, defense).defense.unique()
    return str(specs[0]) if len(specs) else defense


def with_cell(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``cell``: the attack whose trial a row belongs to (a baseline row follows its attack's row)."""
    attack = df.attack.astype(str)
    return df.assign(cell=attack.where(~attack.str.startswith(BASELINE)).ffill())


def is_baseline(df: pd.DataFrame) -> pd.Series:
    return df.attack.astype(str).str.startswith(BASELINE)


def table(df: pd.DataFrame, spec: dict) -> str:
    """One line per attack x local steps x B; the baselines' PSNR (no defense) on the same targets."""
    others = [d for d in spec["defenses"] if d != "none"]
    lines = ["| attack | iterations | B | local steps | PSNR (dB) | "
             + "".join(f"PSNR with {_defense_label(df, d)} | " for d in others)
             + "grey / mean / random image (dB) | SSIM | label acc | t acc | s / reconstruction |",
             "|---|---|---|---|---|" + "---|" * len(others) + "---|---|---|---|---|"]
    df = with_cell(df) if "cell" not in df else df
    for (attack, steps, batch), g in df.groupby(["cell", "local_steps", "batch_size"], sort=False):
        base, g = g[is_baseline(g)], g[~is_baseline(g)]
        none = _of_defense(g, "none")
        guesses = " / ".join(fmt(_of_defense(base[base.attack == f"{BASELINE}{k}"], "none").psnr.mean())
                             for k in ("grey", "mean", "random"))
        opts = spec["attacks"][attack].get("options", {})
        lines.append(f"| {attack} | {iterations_of(opts)} | {batch} | {steps} | {fmt(none.psnr.mean())} | "
                     + "".join(f"{fmt(_of_defense(g, d).psnr.mean())} | " for d in others)
                     + f"{guesses} | {fmt(none.ssim.mean(), '.3f')} | {fmt(none.label_acc.mean())} | "
                     f"{fmt(none.t_acc.mean())} | {fmt(none.wall_s.median(), '.1f')} |")
    return "\n".join(lines)


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = with_cell(df) if "cell" not in df else df
    base, df = df[is_baseline(df)], df[~is_baseline(df)]
    attacks = list(dict.fromkeys(df.attack))
    fig, axes = plt.subplots(1, len(attacks), figsize=(3.2 * len(attacks), 3.2), sharey=True, squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        g = df[df.attack == attack]
        piv = g.pivot_table(index=["local_steps", "batch_size"], columns="defense", values="psnr", aggfunc="mean")
        mean = base[(base.cell == attack) & (base.attack == f"{BASELINE}mean") & (base.defense == "none")]
        guess = mean.groupby(["local_steps", "batch_size"]).psnr.mean().reindex(piv.index)
        piv.index = [f"s{s}/B{b}" for s, b in piv.index]
        piv.plot.bar(ax=ax, rot=60, legend=ax is axes[0][0])
        if guess.notna().any():
            ax.plot(range(len(guess)), guess.to_numpy(), "k_", markersize=14, mew=2, label="mean image")
            if ax is axes[0][0]:
                ax.legend(fontsize=7)
        ax.set_title(attack)
        ax.set_ylabel("PSNR (dB)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def phase_table(ph: pd.DataFrame) -> list[str]:
    lines = ["| variant | PSNR (dB) | SSIM | t acc | cos(e, eps) |", "|---|---|---|---|---|"]
    order = list(dict.fromkeys(ph.variant[~is_baseline(ph)])) + list(dict.fromkeys(ph.variant[is_baseline(ph)]))
    for label in order:
        g = ph[ph.variant == label]
        name = f"{label} image (same targets)" if label.startswith(BASELINE) else label
        lines.append(f"| {name} | {fmt(g.psnr.mean())} ± {fmt(g.psnr.std(ddof=0))} | {fmt(g.ssim.mean(), '.3f')} | "
                     f"{fmt(g.t_acc.mean())} | {fmt(g.eps_cos.mean(), '.3f')} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(HERE / "benchmark.toml"))
    ap.add_argument("--out", default="docs/attacks")
    ap.add_argument("--only", nargs="*", help="attacks to run (default: all in the config)")
    ap.add_argument("--report", action="store_true",
                    help="rebuild benchmark.csv/md/png from the finished cells of an interrupted run")
    args = ap.parse_args(argv)
    if args.report:
        return report(Path(args.out), tomllib.loads(Path(args.config).read_text()))
    spec = tomllib.loads(Path(args.config).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(n, c) for n, c in cells(spec) if not args.only or n in args.only]
    rows, start = [], time.perf_counter()
    for i, (name, mapping) in enumerate(todo):
        cfg = load_attack_config(mapping)
        got = run_attack(cfg, out / "cells" / f"{name}-b{cfg.batch_size}-s{cfg.local_steps}-{cfg.defense}")
        rows += [{**r, "cell": name} for r in got]
        last = [r for r in got if r["attack"] == name][-1]
        done = time.perf_counter() - start
        print(f"[{i + 1}/{len(todo)}] {name} B={cfg.batch_size} steps={cfg.local_steps} {cfg.defense}: "
              f"PSNR {last['psnr']:.2f} dB, {last['wall_s']:.1f} s "
              f"(elapsed {done / 60:.1f} min, ETA {done / (i + 1) * (len(todo) - i - 1) / 60:.1f} min)", flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "benchmark.csv", index=False)
    plot(df, out / "benchmark.png")
    phase_rows = []
    if "phases" in spec and (not args.only or "gidm" in args.only):
        for label, mapping in phase_cells(spec):
            got = run_attack(load_attack_config(mapping), out / "cells" / f"phases-{len(phase_rows)}")
            phase_rows += [{"variant": r["attack"] if r["attack"].startswith(BASELINE) else label, **r} for r in got]
            print(f"phases: {label}: PSNR {got[0]['psnr']:.2f} dB", flush=True)
    md = [f"Benchmark on a {spec['trials']}-trial-per-cell budget; total {(time.perf_counter() - start) / 60:.1f} min.",
          "", table(df, spec)]
    if phase_rows:
        ph = pd.DataFrame(phase_rows)
        ph.to_csv(out / "gidm_phases.csv", index=False)
        md += ["", "GIDM phases (B = 1, FedSGD, mean over trials):", "", *phase_table(ph)]
    (out / "benchmark.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def report(out: Path, spec: dict) -> int:
    frames = [pd.read_csv(p) for p in sorted((out / "cells").glob("*/results.csv"))
              if not p.parent.name.startswith("phases-")]
    if not frames:
        print(f"no finished cells under {out / 'cells'}", file=sys.stderr)
        return 2
    all_rows = pd.concat([with_cell(f) for f in frames], ignore_index=True)
    df = all_rows[~all_rows.source.isna()]
    order = {name: i for i, name in enumerate(spec["attacks"])}
    df = df.sort_values(["cell", "local_steps", "batch_size"], kind="stable",
                        key=lambda c: c.map(order) if c.name == "cell" else c)
    df.to_csv(out / "benchmark.csv", index=False)
    plot(df, out / "benchmark.png")
    text = f"Partial benchmark: {len(frames)} of {len(list(cells(spec)))} cells finished.\n\n" + table(df, spec) + "\n"
    (out / "benchmark.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
