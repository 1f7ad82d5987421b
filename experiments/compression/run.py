"""Compression experiment: uncompressed FedAvg against top-k, STC, QSGD, DHQ and DHQ-DS, over seeds.

For each model (default: the CNN classifier on MNIST-5k; ``--models diffusion`` adds
ddpm-tiny), each partition (IID, Dirichlet 0.5), each method of experiment.toml and each
report seed 0..N-1, one real ``fedsim run`` (Flower simulation, 100 clients) whose
metrics.csv holds the measured bytes of every message. The table's methods run by
default; ``--sweep`` adds the keep-ratio / level sweeps, ``--extra`` the supplementary
methods, ``--methods`` picks any by name. Settings were tuned on ``tuning-seed`` (100),
never on a report seed. summary.py computes the numbers, report.py the table and plot.

Writes to DIR: results.csv (one row per run), summary.csv (per model, partition and
method: means and 95 % t-intervals over seeds), results.md (the table for docs/),
quality_vs_bytes.png. Finished runs under DIR/runs are reused, so a table can be built
over several sittings (``--partitions``, ``--methods`` limit what runs, not what the
report covers); ``--report`` only rebuilds the outputs from the finished runs.

    python experiments/compression/run.py --out DIR [--seeds N] [--rounds R] [--models classifier,diffusion]
        [--partitions iid] [--methods "fedavg,dhq-ds p0.01"] [--sweep] [--extra] [--report]
        [--set KEY=VALUE ...]

``--set`` adds a config key to every run (e.g. ``--set grad-clip=1.0``); use a fresh --out
for it, since finished runs are reused by folder name.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from fedsim.cli.sweep import run_all, sibling
from fedsim.config_values import ConfigError, parse_override

HERE = Path(__file__).resolve().parent
summary, report = sibling(__file__, "summary", "compression"), sibling(__file__, "report", "compression")
Run, folder_of = summary.Run, summary.folder_of

BASES = {"classifier": HERE / "classifier.toml", "diffusion": HERE / "diffusion.toml"}


def seeds_of(spec: dict, n: int) -> list[int]:
    """Report seeds 0..n-1; the tuning seed must not be one of them."""
    seeds = list(range(n))
    if n < 1:
        raise SystemExit("error: --seeds must be at least 1")
    if spec["tuning-seed"] in seeds:
        raise SystemExit(f"error: report seeds 0..{n - 1} include the tuning seed {spec['tuning-seed']}")
    return seeds


def plan(spec: dict, args) -> list[Run]:
    """Every run to do: model x partition x method x seed, with its config overrides.

    Without --methods: the table's methods, plus sweeps (--sweep) and extras (--extra);
    a method named in --methods runs whatever its flags."""
    methods = spec["methods"]
    chosen = args.methods.split(",") if args.methods else [
        n for n, m in methods.items()
        if (not m.get("sweep") or args.sweep) and (not m.get("extra") or args.extra)]
    unknown = [m for m in chosen if m not in methods]
    if unknown:
        raise SystemExit(f"error: unknown method(s) {', '.join(unknown)}; known: {', '.join(methods)}")
    seeds = seeds_of(spec, args.seeds)
    runs = []
    for model in args.models.split(",") if args.models else spec["models"]:
        if model not in BASES:
            raise SystemExit(f"error: unknown model {model!r}; known: {', '.join(BASES)}")
        for partition in args.partitions.split(",") if args.partitions else spec["partitions"]:
            if partition not in spec["partitions"]:
                raise SystemExit(f"error: unknown partition {partition!r}; known: {', '.join(spec['partitions'])}")
            for name in chosen:
                method = dict(methods[name])
                sweep, dynamic = method.pop("sweep", False), method.pop("dynamic", False)
                method.pop("extra", None)
                if model not in method.pop("models", ["classifier"] if sweep else list(BASES)):
                    continue  # sweeps: the classifier only
                # dynamic = true: the [dynamic] schedule; a table: that schedule with these changes
                schedule = {**spec["dynamic"], **dynamic} if isinstance(dynamic, dict) else \
                    (spec["dynamic"] if dynamic else {})
                overrides = {**getattr(args, "common", {}), **method, "partition": partition, **schedule}
                if args.rounds:
                    overrides["rounds"] = args.rounds
                runs += [Run(model, partition, name, seed, {**overrides, "seed": seed}) for seed in seeds]
    return runs


def reported(spec: dict, args, runs: list[Run]) -> list[Run]:
    """The runs the report covers: all partitions and methods that run without --methods
    (so a table built over several sittings shows every finished run, and what is missing),
    then any other run of this call."""
    full = plan(spec, argparse.Namespace(**{**vars(args), "methods": "", "partitions": ""}))
    keys = {r[:4] for r in full}
    return full + [r for r in runs if r[:4] not in keys]


def execute(out: Path, runs: list[Run]) -> None:
    """Each run not yet finished, one `fedsim run` at a time (fedsim.cli.sweep.run_all)."""
    run_all([(f"{r.model} {r.partition} {r.method} seed {r.seed}", BASES[r.model], r.overrides,
              folder_of(out, r)) for r in runs])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (created; finished runs in it are reused)")
    ap.add_argument("--config", default=str(HERE / "experiment.toml"), help="methods and settings")
    ap.add_argument("--seeds", type=int, default=None, help="report seeds 0..N-1 (default: experiment.toml, 3)")
    ap.add_argument("--rounds", type=int, default=0, help="override the rounds of every run (smoke tests)")
    ap.add_argument("--models", default="", help="comma-separated subset of: classifier,diffusion "
                                                 "(default: experiment.toml, the classifier)")
    ap.add_argument("--partitions", default="", help="comma-separated subset of the partitions")
    ap.add_argument("--methods", default="", help="comma-separated methods of experiment.toml, run whatever "
                                                  "their flags (default: the table's methods)")
    ap.add_argument("--sweep", action="store_true", help="also the keep-ratio / level / STC-DS sweeps")
    ap.add_argument("--extra", action="store_true", help="also the supplementary methods (extra = true)")
    ap.add_argument("--report", action="store_true", help="only summarise the runs already finished in --out")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config key for every run (repeatable)")
    args = ap.parse_args(argv)
    try:
        args.common = dict(parse_override(item) for item in args.set)
    except ConfigError as err:
        print(f"error: --set: {err}", file=sys.stderr)
        return 2
    config = Path(args.config)
    if not config.is_file():
        print(f"error: config not found: {config}", file=sys.stderr)
        return 2
    try:
        spec = tomllib.loads(config.read_text())
    except tomllib.TOMLDecodeError as err:
        print(f"error: {config} is not valid TOML: {err}", file=sys.stderr)
        return 2
    args.seeds = spec["seeds"] if args.seeds is None else args.seeds
    runs = plan(spec, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        execute(out, runs)
    window = int(spec["final-window"])
    k_default = {m: tomllib.loads(p.read_text())["clients-per-round"] for m, p in BASES.items()}
    rows = summary.per_run(out, reported(spec, args, runs), window, k_default)
    agg = summary.aggregate(rows)
    rows.to_csv(out / "results.csv", index=False)
    summary.flat(agg).to_csv(out / "summary.csv", index=False)
    md = report.markdown(rows, agg, seeds_of(spec, args.seeds), spec["tuning-seed"], window, args.common)
    (out / "results.md").write_text(md)
    report.plot(out / "quality_vs_bytes.png", rows, agg)
    print(md)
    print(f"wrote results.csv, summary.csv, results.md, quality_vs_bytes.png to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
