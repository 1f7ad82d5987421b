"""Unlearning experiment: every method on three deletion requests.

Requests (experiment.toml): forget digit 0 from a class-conditional and from an
unconditional ddpm-tiny trained federatedly on the bundled digits, and forget
client 19's data from a Maverick run (client 19 alone holds class 1). For each:
one original ``fedsim run`` (base.toml, ledger-every = 2 for FedEraser), then
``fedsim unlearn`` with retrain first (the reference), every other method and
the two controls (fine-tune, continue: plain training for the same rounds),
each scored by fedsim/unlearning/report.py against the original and the
retrained model.

Writes to DIR: results.csv (method, request, forget_rate, fd_remaining,
eval_loss_remaining, mia_auc, wall_s, rounds, bytes, and more: the original
model's and the retrained model's rows included), results.md (the README
table), grids_<request>.png (samples of every model side by side). Runs
already finished in DIR/runs are reused, so an interrupted experiment resumes.

    python experiments/unlearning/run.py --out DIR [--requests class-conditional]
        [--methods retrain,salun] [--report]
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from fedsim.cli.sweep import fedsim_run, fedsim_unlearn  # noqa: E402
from fedsim.unlearning.report import markdown_table  # noqa: E402

HERE = Path(__file__).resolve().parent
BACKDOOR = ["backdoor_acc", "clean_acc"]  # classifier runs with backdoor-clients (backdoor.toml)
COLUMNS = ["method", "request", "forget_rate", "fd_remaining", "eval_loss_remaining", "mia_auc", "wall_s",
           "rounds", "bytes", "forget_rate_cond", "forget_loss", "mia_tpr_1fpr", "wall_vs_retrain",
           "bytes_vs_retrain", "fd_vs_retrain", *BACKDOOR]


def run_request(name: str, spec: dict, methods: dict, out: Path, samples: int, log) -> list[str]:
    """The original run, retrain, then every other method; problems as lines."""
    problems = []
    original = out / "runs" / name / "original"
    t0 = time.monotonic()
    err = fedsim_run(HERE / "base.toml", spec.get("run", {}), original)
    log(f"{name}: original {'FAILED: ' + err if err else 'done'} ({time.monotonic() - t0:.0f} s)")
    if err:
        return [f"{name}/original: {err}"]
    retrain = out / "runs" / name / "retrain"
    for method in ["retrain", *[m for m in methods if m != "retrain"]]:
        if method not in methods:
            continue
        t0 = time.monotonic()
        overrides = {**methods[method], **spec.get("methods", {}).get(method, {})}
        err = fedsim_unlearn(original, overrides.pop("method", method), list(spec["forget"]), overrides,
                             out / "runs" / name / method,
                             retrain=retrain if method != "retrain" and (retrain / "model").is_dir() else None,
                             samples=samples)
        log(f"{name}: {method} {'FAILED: ' + err if err else 'done'} ({time.monotonic() - t0:.0f} s)")
        if err:
            problems.append(f"{name}/{method}: {err}")
    return problems


def collect(out: Path, requests: list[str], methods: list[str]) -> pd.DataFrame:
    rows = []
    for name in requests:
        for method in methods:
            path = out / "runs" / name / method / "unlearning" / "report.csv"
            if not path.is_file():
                continue
            report = pd.read_csv(path)
            for _, row in report.iterrows():
                label = method if row["model"] not in ("original", "retrain") else row["model"]
                if label == "retrain" and method != "retrain":
                    continue  # the retrain row comes from the retrain run's own report
                if label == "original" and any(r["method"] == "original" and r["request"] == name for r in rows):
                    continue
                rows.append({**row.to_dict(), "method": label, "request": name})
    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df:
            df[col] = float("nan")
    ref = df[df.method == "retrain"].set_index("request")
    for col, base in (("wall_vs_retrain", "wall_s"), ("bytes_vs_retrain", "bytes"), ("fd_vs_retrain", "fd_remaining")):
        df[col] = [r[base] / ref.loc[r["request"], base] if r["request"] in ref.index else float("nan")
                   for _, r in df.iterrows()]
    return df[COLUMNS]


def markdown(df: pd.DataFrame) -> str:
    shown = df.copy()
    shown["bytes"] = shown["bytes"] / 1e6
    shown = shown.rename(columns={"bytes": "MB"})
    cols = ["request", "method", "forget_rate", "forget_rate_cond", "fd_remaining", "fd_vs_retrain",
            "eval_loss_remaining", "mia_auc", "wall_s", "wall_vs_retrain", "rounds", "MB"]
    return markdown_table(shown, cols + [c for c in BACKDOOR if shown[c].notna().any()])


def grids(out: Path, requests: list[str], methods: list[str], df: pd.DataFrame) -> None:
    for name in requests:
        panels = []
        for label in ["original", *methods]:
            reference = label in ("original", "retrain")
            folder = out / "runs" / name / ("retrain" if reference else label) / "unlearning"
            found = [p for p in folder.glob("grid_*.png") if reference == (p.stem in ("grid_original", "grid_retrain"))]
            path = folder / f"grid_{label}.png" if reference else (found[0] if found else folder / "none")
            if path.is_file():
                rate = df[(df.request == name) & (df.method == label)]["forget_rate"]
                panels.append((label, path, float(rate.iloc[0]) if len(rate) else float("nan")))
        if not panels:
            continue
        ncol = min(5, len(panels))
        nrow = -(-len(panels) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.9 * nrow), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, (label, path, rate) in zip(axes.flat, panels):
            ax.imshow(Image.open(path), cmap="gray")
            ax.set_title(f"{label}\nforget rate {rate:.1%}", fontsize=9)
        fig.suptitle(f"{name}: samples before / after unlearning", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / f"grids_{name}.png", dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (runs are kept in OUT/runs)")
    parser.add_argument("--config", default=str(HERE / "experiment.toml"))
    parser.add_argument("--requests", help="comma-separated subset of the config's requests")
    parser.add_argument("--methods", help="comma-separated subset of the config's methods")
    parser.add_argument("--report", action="store_true", help="only rebuild the tables and plots")
    args = parser.parse_args(argv)
    spec = tomllib.loads(Path(args.config).read_text())
    requests = args.requests.split(",") if args.requests else list(spec["requests"])
    methods = args.methods.split(",") if args.methods else list(spec["methods"])
    unknown = [r for r in requests if r not in spec["requests"]] + [m for m in methods if m not in spec["methods"]]
    if unknown:
        print(f"error: unknown request/method {', '.join(unknown)}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    problems = []
    if not args.report:
        def log(line: str) -> None:
            print(f"[{(time.monotonic() - t0) / 60:5.1f} min] {line}", flush=True)

        chosen = {m: spec["methods"][m] for m in methods}
        for name in requests:
            problems += run_request(name, spec["requests"][name], chosen, out, int(spec.get("samples", 500)), log)
    df = collect(out, requests, methods)
    df.to_csv(out / "results.csv", index=False, float_format="%.6g")
    (out / "results.md").write_text(markdown(df) + "\n")
    grids(out, requests, methods, df)
    print(markdown(df))
    if not args.report:
        print(f"experiment time {(time.monotonic() - t0) / 60:.1f} min")
    for line in problems:
        print(f"problem: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
