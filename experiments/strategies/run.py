"""Strategies experiment (issue 21): aggregation rules over seeds, and robust rules under attack.

Reads a spec (comparison.toml: FedAvg, FedProx, FedAdam, FedYogi, SCAFFOLD on the CNN and the
diffusion model; robust.toml: FedAvg, median, trimmed mean, Krum, Bulyan under sign-flipping
and backdoor clients). A spec names ``models`` (each a base run config beside it), ``methods``
(config overrides; ``reference``: the method it is compared to, seed by seed; ``models``: the
models it runs on; ``panel``: its plot panel; a table named after a model: overrides for that
model only) or ``rules`` x ``attacks`` (each pair a method,
compared with the rule under the first attack), ``targets`` (per model: the accuracy, or eval
loss, that "rounds to target" asks for), ``final-window`` and ``tuning-seed``.

Each (model, method, seed) is one real ``fedsim run`` (Flower simulation) into
OUT/runs/<model>/<method>/seed<k>/, resumable through fedsim.cli.sweep: a finished run is
kept, so a table is built over several sittings; each run's status.json and metrics.csv are
committed (.gitignore). summary.py computes the numbers, report.py the table and curves.

    python experiments/strategies/run.py --config experiments/strategies/comparison.toml --out DIR
        [--seeds N] [--seeds-from S] [--models classifier] [--methods a,b] [--rounds R] [--report]

Report seeds are S..S+N-1 (default 0..2); the spec's tuning seed must not be among them
(``--seeds-from 100 --seeds 1`` is the tuning pass, into its own --out).
Writes to DIR: results.csv (a row per run), summary.csv (intervals), results.md, curves.png.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from fedsim.cli.sweep import run_all, sibling
from fedsim.config_values import ConfigError, parse_override

summary, report = sibling(__file__, "summary", "strategies"), sibling(__file__, "report", "strategies")
Run, folder_of = summary.Run, summary.folder_of
META = ("reference", "models", "panel")  # method keys that are not run-config keys


def seeds_of(spec: dict, start: int, n: int, tuning: bool) -> list[int]:
    if n < 1:
        raise SystemExit("error: --seeds must be at least 1")
    seeds = list(range(start, start + n))
    if not tuning and spec["tuning-seed"] in seeds:
        raise SystemExit(f"error: report seeds {seeds} include the tuning seed {spec['tuning-seed']}")
    return seeds


def expand(spec: dict) -> dict:
    """The spec's methods: its ``methods`` table, or every ``rules`` x ``attacks`` pair ("rule / attack",
    compared with "rule / <first attack>", plotted in the attack's panel); ``common`` goes into each."""
    common = spec.get("common", {})
    if "methods" in spec:
        return {name: {**common, **m} for name, m in spec["methods"].items()}
    attacks = list(spec["attacks"])
    return {f"{r} / {a}": {**common, **rule, **spec["attacks"][a], "reference": f"{r} / {attacks[0]}", "panel": a}
            for r, rule in spec["rules"].items() for a in attacks}


def plan(spec: dict, args) -> list[Run]:
    """Every (model, method, seed) to run, with its overrides."""
    methods = expand(spec)
    chosen = args.methods.split(",") if args.methods else list(methods)
    if unknown := [m for m in chosen if m not in methods]:
        raise SystemExit(f"error: unknown method(s) {', '.join(unknown)}; known: {', '.join(methods)}")
    models = args.models.split(",") if args.models else list(spec["models"])
    if unknown := [m for m in models if m not in spec["models"]]:
        raise SystemExit(f"error: unknown model(s) {', '.join(unknown)}; known: {', '.join(spec['models'])}")
    tuning = args.seeds_from == spec["tuning-seed"]
    runs = []
    for model in models:
        for name in chosen:
            m = methods[name]
            if model not in m.get("models", list(spec["models"])):
                continue
            overrides = {k: v for k, v in m.items() if k not in META and k not in spec["models"]}
            overrides.update(m.get(model, {}))  # e.g. [methods.scaffold.classifier] lr = 0.05: that model only
            if args.rounds:
                overrides["rounds"] = args.rounds
            for seed in seeds_of(spec, args.seeds_from, args.seeds, tuning):
                runs.append(Run(model, name, seed, {**args.common, **overrides, "seed": seed},
                                m.get("reference", spec.get("reference", "fedavg")), m.get("panel", "")))
    return runs


def execute(out: Path, spec_dir: Path, spec: dict, runs: list[Run]) -> None:
    """Each run not yet finished, one `fedsim run` at a time (fedsim.cli.sweep.run_all)."""
    run_all([(f"{r.model} {r.method} seed {r.seed}", spec_dir / spec["models"][r.model], r.overrides,
              folder_of(out, r)) for r in runs])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="the experiment spec (comparison.toml, robust.toml)")
    ap.add_argument("--out", required=True, help="output folder (finished runs in it are reused)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the spec's)")
    ap.add_argument("--seeds-from", type=int, default=0, help="first seed (default 0; the tuning seed: a tuning pass)")
    ap.add_argument("--models", default="", help="comma-separated subset of the spec's models")
    ap.add_argument("--methods", default="", help="comma-separated subset of the spec's methods")
    ap.add_argument("--rounds", type=int, default=0, help="override every run's rounds (smoke tests)")
    ap.add_argument("--report", action="store_true", help="only summarise the runs already finished")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config key for every run")
    args = ap.parse_args(argv)
    try:
        args.common = dict(parse_override(item) for item in args.set)
    except ConfigError as err:
        print(f"error: --set: {err}", file=sys.stderr)
        return 2
    config = Path(args.config)
    try:
        spec = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        print(f"error: cannot read the spec {config}: {err}", file=sys.stderr)
        return 2
    args.seeds = spec.get("seeds", 3) if args.seeds is None else args.seeds
    runs = plan(spec, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        execute(out, config.resolve().parent, spec, runs)
    rows = summary.per_run(out, runs, int(spec["final-window"]), spec["targets"])
    agg = summary.aggregate(rows)
    rows.to_csv(out / "results.csv", index=False)
    summary.flat(agg).to_csv(out / "summary.csv", index=False)
    md = report.markdown(rows, agg, spec, sorted(set(rows.seed)), args.common)
    (out / "results.md").write_text(md)
    report.curves(out / "curves.png", summary.curve_data(out, runs))
    print(md)
    print(f"wrote results.csv, summary.csv, results.md, curves.png to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
