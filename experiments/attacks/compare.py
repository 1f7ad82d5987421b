"""Attack variants compared on the same trials: paired PSNR differences, recovered secrets, CPU cost.

Reads a comparison config (gidm_plus_recovery.toml: GIDM+ against GIDM given eps and t;
agic_vs_simulation.toml: AGIC against the simulation attack and IG at 8 local steps): one fedsim
attack config shared by every variant (``[attack]``, ``[options]``), the variants, the first
of which is the reference, the seed (apart from ``tune-seed``), and ``[checks]``: per variant,
the issue's targets (t-acc, eps-cos: at least; psnr-vs-reference: the mean paired difference at
least; speedup: the reference's median CPU seconds per iteration over the variant's, at least).
Every variant attacks the same trials (attacks/trials.py derives images, noise and t from the
seed and trial, not the attack), so differences are paired per trial. A variant with
``equal-cpu = true`` gets as many iterations as fit in the reference's median CPU time at the
per-iteration cost measured for the variant before it (same attack, the config's iterations).
A diffusion config names ``prior-seed``: one GIDM prior for every seed (the attacker's model
is a fixed artifact). Writes to --out: results.csv (one row per variant x trial, with the
trivial baselines grey / mean / random image scored on the same targets), NAME.md (means with
95 % t-intervals; t accuracy with a Wilson interval; the checks), NAME.png (PSNR per trial per
variant). Finished variants (cells/<n>/results.csv) are reused; --report rebuilds the outputs.

    python experiments/attacks/compare.py CONFIG [--out DIR] [--trials N] [--tune] [--report]
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd

from attacks.config import load_attack_config
from attacks.prior import prior_path
from attacks.runner import run_attack
from fedsim.records.stats import paired_difference, t_interval, wilson

BASELINE = "baseline-"


def shared_prior(spec: dict) -> str | None:
    """One GIDM prior for every seed, when the config names a prior seed."""
    if "prior-seed" not in spec:
        return None
    a = spec["attack"]

    def progress(epoch, epochs, loss):
        if epoch % 10 == 0 or epoch == epochs:
            print(f"prior: epoch {epoch}/{epochs}, loss {loss:.4f}", flush=True)
    return str(prior_path(a["dataset"], a["model"], a["timesteps"], a["beta-schedule"], epochs=a.get("prior-epochs", 60),
                          seed=int(spec["prior-seed"]), progress=progress))


def variant_mapping(spec: dict, v: dict, seed: int, trials: int, prior: str | None) -> dict:
    options = {**spec.get("options", {}), **v.get("options", {}), **({"prior": prior} if prior else {})}
    return {**spec["attack"], "attack": v["attack"], "seed": seed, "trials": trials,
            "threat": dict(v.get("threat", {})), "options": options}


def variant_configs(spec: dict, seed: int, trials: int, prior: str | None):
    for i, (label, v) in enumerate(spec["variants"].items()):
        yield i, label, load_attack_config(variant_mapping(spec, v, seed, trials, prior))


def attacks_of(df: pd.DataFrame) -> pd.DataFrame:
    return df[~df.attack.astype(str).str.startswith(BASELINE)]


def cpu_per_iteration(rows: pd.DataFrame) -> float:
    """Median CPU seconds per iteration of the attack rows; NaN when CPU time was not recorded."""
    a = attacks_of(rows)
    return float((a.cpu_s / a.iterations.clip(lower=1)).median()) if "cpu_s" in a else float("nan")


def equal_cpu_iterations(frames: list[pd.DataFrame]) -> int:
    """Iterations that fit in the reference's median CPU time at the previous variant's cost per iteration."""
    per_iteration = cpu_per_iteration(frames[-1])
    if "cpu_s" not in attacks_of(frames[0]) or not per_iteration > 0:
        raise SystemExit("error: equal-cpu needs the CPU time of the reference and of the variant before it")
    return max(1, round(float(attacks_of(frames[0]).cpu_s.median()) / per_iteration))


def run(spec: dict, out: Path, seed: int, trials: int) -> pd.DataFrame:
    frames, start = [], time.perf_counter()
    prior = shared_prior(spec)
    variants = list(spec["variants"].items())
    for i, (label, v) in enumerate(variants):
        mapping = variant_mapping(spec, v, seed, trials, prior)
        if v.get("equal-cpu"):
            mapping["options"]["iterations"] = equal_cpu_iterations(frames)
        cell = out / "cells" / str(i)
        done = cell / "results.csv"
        if done.is_file() and len(attacks_of(pd.read_csv(done))) == trials:
            rows = pd.read_csv(done)
        else:
            rows = pd.DataFrame(run_attack(load_attack_config(mapping), cell))
            rows.to_csv(done, index=False)
        frames.append(rows.assign(variant=label))
        att = attacks_of(rows)
        cpu = f"{att.cpu_s.median():.0f} CPU s" if "cpu_s" in att else "CPU time not recorded"
        print(f"[{i + 1}/{len(variants)}] {label}: PSNR {att.psnr.mean():.2f} dB, t acc {att.t_acc.mean():.2f}, "
              f"cos(e, eps) {att.eps_cos.mean():.3f}, {cpu} ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)
    return pd.concat(frames, ignore_index=True)


def fmt(iv, digits: int = 3) -> str:
    return iv.fmt(digits) if iv is not None and iv.n else "–"


def proportion(iv) -> str:
    """'5/5 [0.57, 1.00]': a Wilson interval is not symmetric, so no ± here."""
    if iv is None or not iv.n:
        return "–"
    return f"{round(iv.mean * iv.n)}/{iv.n} [{iv.low:.2f}, {iv.high:.2f}]"


def check_lines(spec: dict, stats: dict) -> list[str]:
    lines = []
    for label, wants in spec.get("checks", {}).items():
        s = stats.get(label)
        if s is None:
            lines.append(f"- {label}: no results")
            continue
        for key, bound in wants.items():
            iv = s[key]
            ok = iv is not None and iv.n > 0 and iv.mean >= bound
            value = "–" if iv is None or not iv.n else (f"{iv.mean:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}]"
                                                       if key == "psnr-vs-reference" else f"{iv.mean:.3g}")
            lines.append(f"- {label}: {key} >= {bound}: {'met' if ok else 'NOT met'} ({value})")
    return lines


def table(df: pd.DataFrame, seed: int, spec: dict) -> list[str]:
    base, att = df[df.attack.astype(str).str.startswith(BASELINE)], attacks_of(df)
    labels = list(dict.fromkeys(att.variant))
    reference = labels[0]
    ref = att[att.variant == reference].set_index("trial")
    ref_cpu_it = cpu_per_iteration(ref)
    lines = [f"Seed {seed}, {att.trial.nunique()} trials per variant (the same targets in every variant); "
             "means with 95 % t-intervals, t accuracy with its Wilson interval; CPU time of the attack's "
             "process (all its threads), median.", "",
             f"| variant | iterations | PSNR (dB) | vs {reference} (dB, paired) | SSIM | t exact | |t^ - t| | "
             "cos(e, eps) | CPU s / attack | speedup per iteration |", "|---|---|---|---|---|---|---|---|---|---|"]
    stats = {}
    for label in labels:
        g = att[att.variant == label]
        diff = paired_difference(g.set_index("trial").psnr.to_dict(), ref.psnr.to_dict()) \
            if label != reference else None
        t_ok = g.t_acc.dropna()
        tacc = wilson(int(t_ok.sum()), len(t_ok)) if len(t_ok) else None
        cos = t_interval(g.eps_cos.dropna())
        cpu_it = cpu_per_iteration(g)
        measured = cpu_it > 0 and ref_cpu_it > 0  # NaN (not recorded) compares false
        speed = t_interval([ref_cpu_it / cpu_it]) if measured else None
        stats[label] = {"t-acc": tacc, "eps-cos": cos, "psnr-vs-reference": diff, "speedup": speed}
        cpu = f"{g.cpu_s.median():.1f}" if "cpu_s" in g and g.cpu_s.notna().any() else "–"
        lines.append(f"| {label} | {int(g.iterations.median())} | {fmt(t_interval(g.psnr))} | "
                     f"{fmt(diff) if diff else 'reference'} | {fmt(t_interval(g.ssim))} | "
                     f"{proportion(tacc)} | {fmt(t_interval(g.t_abs_err.dropna()), 2)} | {fmt(cos)} | "
                     f"{cpu} | {f'{ref_cpu_it / cpu_it:.2f}x' if measured else '–'} |")
    for kind in ("grey", "mean", "random"):
        g = base[(base.attack == f"{BASELINE}{kind}") & (base.variant == reference)]
        lines.append(f"| {kind} image (same targets) | | {fmt(t_interval(g.psnr))} | | {fmt(t_interval(g.ssim))} "
                     "| | | | | |")
    checks = check_lines(spec, stats)
    return lines + (["", "The issue's targets (means):", "", *checks] if checks else [])


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    att = attacks_of(df)
    labels = list(dict.fromkeys(att.variant))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for i, label in enumerate(labels):
        y = att[att.variant == label].psnr.to_numpy()
        ax.scatter([i] * len(y), y, s=14, alpha=0.7)
        ax.hlines(y.mean(), i - 0.3, i + 0.3, color="k")
    mean = df[(df.attack == f"{BASELINE}mean") & (df.variant == labels[0])].psnr.mean()
    ax.axhline(mean, ls="--", color="grey", label=f"mean image ({mean:.1f} dB)")
    ax.set_xticks(range(len(labels)), [lb.replace(" (", "\n(") for lb in labels], fontsize=7)
    ax.set_ylabel("PSNR (dB)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="a comparison config, e.g. experiments/attacks/gidm_plus_recovery.toml")
    ap.add_argument("--out", help="default: the config's out")
    ap.add_argument("--trials", type=int, default=0, help="override the config's trials (smoke tests)")
    ap.add_argument("--tune", action="store_true", help="run the tuning seed into OUT/tune")
    ap.add_argument("--report", action="store_true", help="rebuild the outputs from results.csv")
    args = ap.parse_args(argv)
    try:
        spec = tomllib.loads(Path(args.config).read_text())
        name, out = spec["name"], Path(args.out or spec["out"])
    except (OSError, tomllib.TOMLDecodeError, KeyError) as err:
        print(f"error: {args.config}: {err}", file=sys.stderr)
        return 2
    out = out / ("tune" if args.tune else "")
    seed = int(spec["tune-seed"] if args.tune else spec["seed"])
    if not args.tune and seed == int(spec["tune-seed"]):
        print("error: the reported seed must differ from the tuning seed", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    if args.report:
        df = pd.read_csv(out / "results.csv")
    else:
        df = run(spec, out, seed, args.trials or int(spec["trials"]))
        df.to_csv(out / "results.csv", index=False)
    (out / f"{name}.md").write_text("\n".join(table(df, seed, spec)) + "\n")
    plot(df, out / f"{name}.png")
    print(f"wrote {out / f'{name}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
