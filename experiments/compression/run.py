"""Compression experiment: uncompressed FedAvg against top-k, STC, QSGD and DHQ(-DS).

For each model (the digits CNN classifier, the ddpm-tiny diffusion model), each
partition (IID, Dirichlet 0.5) and each method of experiment.toml, one real
``fedsim run`` (Flower simulation, 100 clients) whose metrics.csv holds the
measured bytes of every message, up and down. Then, per run:

- final_quality: test accuracy (classifier) or the server's eval loss (diffusion),
  mean over the last ``final_window`` rounds;
- uplink_bytes / downlink_bytes: cumulative serialized bytes over the run;
- target: 99 % of FedAvg's final accuracy (or 101 % of its final eval loss), on
  the same model and partition; rounds_to_target / bytes_to_target: the first
  round at which the 3-round moving average of the quality meets it, and the
  cumulative uplink bytes by then (empty if never).

Writes to DIR: results.csv (codec, model, partition, keep_ratio, levels,
final_quality, uplink_bytes, downlink_bytes, bytes_to_target, and more),
results.md (the README table), quality_vs_bytes.png. Runs already finished in
DIR/runs are reused, so an interrupted experiment resumes.

    python experiments/compression/run.py --out DIR [--rounds R] [--models classifier]
        [--partitions iid] [--methods fedavg,dhq-ds] [--no-sweep] [--extra] [--report]
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
BASES = {"classifier": HERE / "classifier.toml", "diffusion": HERE / "diffusion.toml"}
COLUMNS = ["method", "codec", "model", "partition", "keep_ratio", "levels", "sampling", "k_start", "k_min",
           "quality_metric",
           "final_quality", "uplink_bytes", "downlink_bytes", "uplink_reduction", "uploads", "target",
           "rounds_to_target", "bytes_to_target", "encode_s", "rounds", "note"]


def plan(spec: dict, args) -> list[tuple[str, str, str, dict]]:
    """(model, partition, method, overrides) of every run to do."""
    methods = spec["methods"]
    chosen = args.methods.split(",") if args.methods else list(methods)
    unknown = [m for m in chosen if m not in methods]
    if unknown:
        raise SystemExit(f"error: unknown method(s) {', '.join(unknown)}; known: {', '.join(methods)}")
    runs = []
    for model in args.models.split(",") if args.models else spec["models"]:
        if model not in BASES:
            raise SystemExit(f"error: unknown model {model!r}; known: {', '.join(BASES)}")
        for partition in args.partitions.split(",") if args.partitions else spec["partitions"]:
            for name in chosen:
                method = dict(methods[name])
                sweep, dynamic = method.pop("sweep", False), method.pop("dynamic", False)
                extra = method.pop("extra", False)
                models = method.pop("models", ["classifier"] if sweep else list(BASES))
                if (sweep and args.no_sweep) or model not in models or (extra and not args.extra):
                    continue  # sweeps: classifier only (cheaper); extra: only with --extra
                # dynamic = true: the [dynamic] schedule; a table: that schedule with these changes
                schedule = {**spec["dynamic"], **dynamic} if isinstance(dynamic, dict) else \
                    (spec["dynamic"] if dynamic else {})
                overrides = {**method, "partition": partition, **schedule}
                if args.rounds:
                    overrides["rounds"] = args.rounds
                runs.append((model, partition, name, overrides))
    return runs


def folder_of(out: Path, model: str, partition: str, method: str) -> Path:
    return out / "runs" / model / partition / method.replace(" ", "_")


def quality(df: pd.DataFrame, model: str) -> tuple[str, pd.Series, bool]:
    """(column, per-round values, higher is better)."""
    if model == "classifier":
        return "test_acc", df["test_acc"], True
    return "eval_loss", df["eval_loss"], False


def _base_value(model: str, key: str):
    return tomllib.loads(BASES[model].read_text())[key]


def summarise(out: Path, spec: dict, runs: list) -> pd.DataFrame:
    window = int(spec.get("final_window", 5))
    rows, frames = [], {}
    for model, partition, name, overrides in runs:
        folder = folder_of(out, model, partition, name)
        if is_done(folder):
            frames[model, partition, name] = pd.read_csv(folder / "metrics.csv")
    for model, partition, name, overrides in runs:
        base = {"method": name, "codec": overrides.get("compression", "none"), "model": model,
                "partition": partition,
                "keep_ratio": overrides.get("keep-ratio") if overrides.get("compression") in ("topk", "stc", "dhq")
                else None,
                "levels": (overrides.get("dhq-levels", 4) if overrides.get("compression") == "dhq" else
                           1 if overrides.get("compression") == "stc" else
                           overrides.get("qsgd-levels", 16) if overrides.get("compression") == "qsgd" else None),
                "sampling": overrides.get("sampling", "constant"),
                "k_start": overrides.get("clients-per-round", _base_value(model, "clients-per-round")),
                "k_min": overrides.get("sampling-min") if overrides.get("sampling", "constant") != "constant"
                else None}
        df = frames.get((model, partition, name))
        if df is None:
            err = folder_of(out, model, partition, name) / "error.txt"
            rows.append({**base, "note": err.read_text().strip() if err.exists() else "not run"})
            continue
        metric, q, higher = quality(df, model)
        final = float(q.tail(window).mean())
        ref = frames.get((model, partition, "fedavg"))
        row = {**base, "quality_metric": metric, "final_quality": final,
               "uplink_bytes": int(df["bytes_up_total"].iloc[-1]),
               "downlink_bytes": int(df["bytes_down_total"].iloc[-1]),
               "uploads": int(df["clients_sampled"].sum()), "rounds": len(df),
               "encode_s": float(df["encode_s"].mean()) if "encode_s" in df else 0.0, "note": ""}
        if ref is not None:
            ref_final = float(quality(ref, model)[1].tail(window).mean())
            target = 0.99 * ref_final if higher else 1.01 * ref_final
            smooth = q.rolling(3, min_periods=1).mean().to_numpy()
            hit = np.flatnonzero(smooth >= target if higher else smooth <= target)
            row.update(target=target, uplink_reduction=int(ref["bytes_up_total"].iloc[-1]) / row["uplink_bytes"])
            if hit.size:
                row.update(rounds_to_target=int(df["round"].iloc[hit[0]]),
                           bytes_to_target=int(df["bytes_up_total"].iloc[hit[0]]))
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def mb(x) -> str:
    return "" if pd.isna(x) else f"{x / 1e6:.2f}"


def table(df: pd.DataFrame) -> str:
    lines = ["| model | partition | method | codec | p | L / s | K_t | uploads | final quality | vs FedAvg | "
             "uplink MB | uplink reduction | rounds to target | uplink MB to target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (model, partition), g in df.groupby(["model", "partition"], sort=False):
        ref = g[g.method == "fedavg"]
        ref_q = float(ref.final_quality.iloc[0]) if len(ref) and not pd.isna(ref.final_quality.iloc[0]) else None
        for r in g.itertuples():
            if r.note:
                lines.append(f"| {model} | {partition} | {r.method} | {r.codec} | | | | | {r.note} | | | | | |")
                continue
            metric = "acc" if r.quality_metric == "test_acc" else "loss"
            if ref_q is None or r.method == "fedavg":
                delta = ""
            elif metric == "acc":
                delta = f"{100 * (r.final_quality - ref_q):+.1f} pt"
            else:
                delta = f"{100 * (r.final_quality / ref_q - 1):+.1f} %"
            p = "" if pd.isna(r.keep_ratio) else f"{r.keep_ratio:g}"
            lv = "" if pd.isna(r.levels) else f"{int(r.levels)}"
            red = "" if pd.isna(r.uplink_reduction) else f"{r.uplink_reduction:.1f}x"
            rt = "never" if pd.isna(r.rounds_to_target) else str(int(r.rounds_to_target))
            kt = f"{int(r.k_start)}" if r.sampling == "constant" else f"{int(r.k_start)}→{int(r.k_min)}"
            lines.append(f"| {model} | {partition} | {r.method} | {r.codec} | {p} | {lv} | {kt} | {int(r.uploads)} | "
                         f"{metric} {r.final_quality:.4f} | {delta} | {mb(r.uplink_bytes)} | {red} | {rt} | "
                         f"{mb(r.bytes_to_target)} |")
    return "\n".join(lines)


def plot(out: Path, df: pd.DataFrame, runs: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((m, p) for m, p, _, _ in runs))
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.4 * rows), squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    for ax, (model, partition) in zip(axes.ravel(), panels):
        for m, p, name, _ in runs:
            folder = folder_of(out, m, p, name)
            if (m, p) != (model, partition) or not is_done(folder):
                continue
            d = pd.read_csv(folder / "metrics.csv")
            metric, q, _ = quality(d, model)
            style = "-" if name in ("fedavg", "dhq-ds") else "--" if " " not in name else ":"
            ax.plot(d["bytes_up_total"] / 1e6, q.rolling(3, min_periods=1).mean(), style, label=name,
                    lw=2 if name in ("fedavg", "dhq-ds") else 1)
        target = df[(df.model == model) & (df.partition == partition)].target.dropna()
        if len(target):
            ax.axhline(float(target.iloc[0]), color="grey", lw=0.8, ls=":", label="target")
        ax.set_xscale("log")
        ax.set(title=f"{model}, {partition}, 100 clients", xlabel="cumulative uplink MB (measured, log)",
               ylabel=("test accuracy" if model == "classifier" else "eval loss") + " (3-round mean)")
        if model != "classifier":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "quality_vs_bytes.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (created; finished runs in it are reused)")
    ap.add_argument("--config", default=str(HERE / "experiment.toml"), help="methods and settings")
    ap.add_argument("--rounds", type=int, default=0, help="override the rounds of every run (smoke tests)")
    ap.add_argument("--models", default="", help="comma-separated subset of: classifier,diffusion")
    ap.add_argument("--partitions", default="", help="comma-separated subset of the partitions")
    ap.add_argument("--methods", default="", help="comma-separated subset of the methods")
    ap.add_argument("--no-sweep", action="store_true", help="skip the keep-ratio / level sweeps")
    ap.add_argument("--extra", action="store_true",
                    help="also the supplementary methods (extra = true; about 10 more minutes)")
    ap.add_argument("--report", action="store_true", help="only summarise the runs already in --out")
    args = ap.parse_args(argv)
    config = Path(args.config)
    if not config.is_file():
        print(f"error: config not found: {config}", file=sys.stderr)
        return 2
    try:
        spec = tomllib.loads(config.read_text())
    except tomllib.TOMLDecodeError as err:
        print(f"error: {config} is not valid TOML: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = plan(spec, args)
    t0 = time.time()
    if not args.report:
        for i, (model, partition, name, overrides) in enumerate(runs, 1):
            folder = folder_of(out, model, partition, name)
            done = is_done(folder)
            print(f"[{i}/{len(runs)}] {model} {partition} {name}" + (" (done)" if done else " ..."), flush=True)
            err = fedsim_run(BASES[model], overrides, folder)
            if err:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "error.txt").write_text(err + "\n")
                print(f"    failed: {err}", flush=True)
    df = summarise(out, spec, runs)
    df.to_csv(out / "results.csv", index=False)
    (out / "results.md").write_text(table(df) + "\n")
    plot(out, df, runs)
    print(table(df))
    print(f"\nwrote {out / 'results.csv'}, results.md, quality_vs_bytes.png ({(time.time() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
