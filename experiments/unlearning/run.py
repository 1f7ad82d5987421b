"""Unlearning experiment: every method and the two controls on three deletion requests, over seeds.

Requests (experiment.toml): forget digit 0 from a class-conditional and from an
unconditional ddpm-tiny trained federatedly on MNIST-5k, and forget the Maverick client
99's data (it alone holds class 1) from a run with FedEMD selection. For each request and
each report seed 0..N-1: one original ``fedsim run`` (base.toml; ledger-every = 2 for
FedEraser), then ``fedsim unlearn`` with retrain first (the reference), every other method
and the controls (fine-tune: plain training on the remaining data for the same rounds at
the same lr; continue: the same on all data), each scored by fedsim/unlearning/report.py.
``--tune`` runs the tuning seed (experiment.toml, 100) instead: settings are chosen there,
never on a report seed (calibration.md). summary.py computes the numbers, report.py the tables.

Writes to DIR: results.csv (one row per request, seed and model), summary.csv (per request
and model: means, 95 % t-intervals, the paired difference to fine-tune, the acceptance
check), results.md, grids_<request>.png (samples of every model, the first seed); with
--tune: tune.csv, tune.md. Finished runs under DIR/runs are reused, so the table can be
built over several sittings; --report only rebuilds the outputs.

    python experiments/unlearning/run.py --out DIR [--seeds N] [--tune] [--requests class-conditional]
        [--methods retrain,salun] [--report] [--rounds R --samples S]   (the last two: smoke tests)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import tomllib
from pathlib import Path

from fedsim.cli.sweep import fedsim_run, fedsim_unlearn, sibling, unlearn_done

HERE = Path(__file__).resolve().parent
summary, report = sibling(__file__, "summary", "unlearning"), sibling(__file__, "report", "unlearning")


def folder(out: Path, request: str, seed: int, method: str) -> Path:
    return out / "runs" / request / f"seed{seed}" / method


def run_cell(out: Path, request: str, spec: dict, seed: int, methods: dict, samples: int, log,
             rounds: int = 0) -> list[str]:
    """The original run of one request and seed, retrain, then every other method; problems as lines.
    rounds > 0 overrides the original's rounds (smoke tests)."""
    original = folder(out, request, seed, "original")
    if all(unlearn_done(folder(out, request, seed, m)) for m in methods):
        return []  # the whole cell is done (its reports may come from a commit, without models)
    if not (original / "model").is_dir():
        shutil.rmtree(original, ignore_errors=True)  # a committed status.json without its model: rerun
    t0 = time.monotonic()
    err = fedsim_run(HERE / "base.toml", {**spec.get("run", {}), "seed": seed, **({"rounds": rounds} if rounds else {})},
                     original)
    log(f"{request} seed {seed}: original {'FAILED: ' + err if err else 'done'} ({time.monotonic() - t0:.0f} s)")
    if err:
        return [f"{request}/seed{seed}/original: {err}"]
    problems = []
    retrain = folder(out, request, seed, "retrain")
    for method in sorted(methods, key=lambda m: m != "retrain"):
        t0 = time.monotonic()
        overrides = {**methods[method], **spec.get("methods", {}).get(method, {})}
        err = fedsim_unlearn(original, overrides.pop("method", method), list(spec["forget"]), overrides,
                             folder(out, request, seed, method),
                             retrain=retrain if method != "retrain" and (retrain / "model").is_dir() else None,
                             samples=samples)
        log(f"{request} seed {seed}: {method} {'FAILED: ' + err if err else 'done'} ({time.monotonic() - t0:.0f} s)")
        if err:
            problems.append(f"{request}/seed{seed}/{method}: {err}")
    return problems


def seeds_of(spec: dict, n: int, tune: bool) -> list[int]:
    if tune:
        return [int(spec["tuning-seed"])]
    if n < 1:
        raise SystemExit("error: --seeds must be at least 1")
    if spec["tuning-seed"] in range(n):
        raise SystemExit(f"error: report seeds 0..{n - 1} include the tuning seed {spec['tuning-seed']}")
    return list(range(n))


def panels(out: Path, requests: list[str], methods: list[str], seed: int, rows) -> dict:
    """Per request: (label, grid file, forget rate) of the original, retrain and each method on ``seed``."""
    found = {}
    for request in requests:
        found[request] = []
        for label in ["original", *methods]:
            reference = label in ("original", "retrain")
            where = folder(out, request, seed, "retrain" if reference else label) / "unlearning"
            grids = sorted(p for p in where.glob("grid_*.png")
                           if reference == (p.stem in ("grid_original", "grid_retrain")))
            path = where / f"grid_{label}.png" if reference else (grids[0] if grids else where / "none")
            rate = rows[(rows.request == request) & (rows.seed == seed) & (rows.model == label)].forget_rate
            found[request].append((label, path, float(rate.iloc[0]) if len(rate) else float("nan")))
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (runs are kept in OUT/runs and reused)")
    ap.add_argument("--config", default=str(HERE / "experiment.toml"))
    ap.add_argument("--seeds", type=int, default=None, help="report seeds 0..N-1 (default: experiment.toml, 3)")
    ap.add_argument("--tune", action="store_true", help="run the tuning seed only; writes tune.csv / tune.md")
    ap.add_argument("--requests", help="comma-separated subset of the config's requests (what runs)")
    ap.add_argument("--methods", help="comma-separated subset of the config's methods (what runs)")
    ap.add_argument("--report", action="store_true", help="only rebuild the tables and plots")
    ap.add_argument("--rounds", type=int, default=0, help="override the original runs' rounds (smoke tests)")
    ap.add_argument("--samples", type=int, default=0, help="override the samples scored per model (smoke tests)")
    args = ap.parse_args(argv)
    try:
        spec = tomllib.loads(Path(args.config).read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        print(f"error: cannot read {args.config}: {err}", file=sys.stderr)
        return 2
    requests = args.requests.split(",") if args.requests else list(spec["requests"])
    methods = args.methods.split(",") if args.methods else list(spec["methods"])
    unknown = [r for r in requests if r not in spec["requests"]] + [m for m in methods if m not in spec["methods"]]
    if unknown:
        print(f"error: unknown request/method {', '.join(unknown)}", file=sys.stderr)
        return 2
    seeds = seeds_of(spec, spec["seeds"] if args.seeds is None else args.seeds, args.tune)
    samples = args.samples or int(spec.get("samples", 2000))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    problems = []
    if not args.report:
        def log(line: str) -> None:
            print(f"[{(time.monotonic() - t0) / 60:5.1f} min] {line}", flush=True)

        chosen = {m: spec["methods"][m] for m in methods}
        for request in requests:  # request-major, in the config's order: the class request first
            for seed in seeds:
                problems += run_cell(out, request, spec["requests"][request], seed, chosen, samples, log, args.rounds)
    every = list(spec["methods"])  # the report covers every request and method, run or not
    planned = {(r, s, m): folder(out, r, s, m) for r in spec["requests"] for s in seeds for m in every}
    rows = summary.read_reports(planned)
    class_requests = {r for r, q in spec["requests"].items() if "--class" in q["forget"]}
    agg = summary.across_seeds(rows, every, class_requests)
    name = "tune" if args.tune else "results"
    rows.to_csv(out / f"{name}.csv", index=False, float_format="%.6g")
    if not args.tune:
        agg.to_csv(out / "summary.csv", index=False, float_format="%.6g")
    planned_models = len(spec["requests"]) * len(seeds) * (len(every) + 1)
    md = report.markdown(rows, agg, seeds, int(spec["tuning-seed"]), samples, planned_models, summary.RULE)
    (out / f"{name}.md").write_text(md)
    report.grids(out, panels(out, list(spec["requests"]), every, seeds[0], rows))
    print(md)
    if not args.report:
        print(f"experiment time {(time.monotonic() - t0) / 60:.1f} min")
    for line in problems:
        print(f"problem: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
