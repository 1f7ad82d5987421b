"""FedEMD experiment: rounds to 99 % of random selection's best accuracy (R@99), with intervals.

The protocol of Huang et al., "Maverick Matters" (PAKDD 2023), scaled to mnist5k
(base.toml): small CNN, 50 clients, 5 per round, one exclusive Maverick
(exclusive-1) or two (exclusive-2), FedAvg, SGD with momentum 0.9, batch 4, one
local epoch. Every selector of experiment.toml runs on the report seeds 0..N-1
(the seed also draws the partition and the initial weights). Each run is a real
``fedsim run`` kept in DIR/runs/<mavericks>/<selector>/seed<k>; finished runs are
reused, so the table can be built over several sittings. A finished run whose
config.toml no longer matches what the matrix asks for is reported as stale and
left alone (remove its folder to redo it). report.py turns the folders into the
table: R@99 per seed, censored at the budget, means with 95 % t-intervals, the
paired difference to random and a verdict.

--tune runs the [tune] grid of one selector (the Shapley selector's temperature x
decay) on the tuning seed(s), disjoint from the report seeds, on one Maverick
setting, with random on the same seed(s) as the reference; the pick is the
smallest R@99 (ties: the best final accuracy). Report runs then use the pick in
DIR/tune.csv, else experiment.toml's values; r99.md says which.

Writes to DIR:
  r99.csv        one row per report run: mavericks, selector, seed, folder, r99, reached, target,
                 final_acc, best_acc, wall_s (sum of the rounds' wall_s), maverick_selections, note
  r99.md         the table (docs/fedemd/r99.md is a copy)
  accuracy.png   test accuracy per round: each seed thin, the mean over seeds thick
  selection.png  the Maverick's selection probability per round (first setting, seed 0)
  tune.csv, tune.md   (--tune) one row per setting and random, and the pick
  diffusion.csv  (--diffusion) rounds until the Maverick's class is generated at its share

    python experiments/fedemd/run.py --out DIR [--seeds N] [--rounds R] [--extra] [--diffusion] [--report]
    python experiments/fedemd/run.py --out DIR --tune [--report]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd

from fedsim.cli.sweep import fedsim_run, is_done, sibling

HERE = Path(__file__).resolve().parent
RUNNER_KEYS = {"only-mavericks"}  # in a [selectors.*] table, read by this script, not passed to fedsim run


report = sibling(__file__, "report", "fedemd")
Run, REFERENCE = report.Run, report.REFERENCE


def run_folder(out: Path, *parts: str) -> Path:
    return out.joinpath("runs", *parts)


def folder_name(label: str, over: dict, keys: list[str]) -> str:
    """A tuned selector's folder carries its setting ("shapley-temperature0.01-decay0.75"),
    so runs of different settings never share a folder."""
    return label + "".join(f"-{k.rsplit('-', 1)[-1]}{over[k]:g}" for k in keys)


def overrides(table: dict) -> dict:
    """A selector's run-config overrides: its experiment.toml table without the runner's keys."""
    return {k: v for k, v in table.items() if k not in RUNNER_KEYS}


def matrix(out: Path, selectors: dict[str, dict], seeds: list[int], rounds: int, mavericks: list[str],
           tuned: dict[str, list[str]]) -> list[Run]:
    """Classifier runs; ``tuned``: label -> the keys its folder name carries. A selector with
    ``only-mavericks`` runs in those Maverick settings only."""
    return [Run(mav, label, seed, run_folder(out, mav, folder_name(label, over, tuned.get(label, [])), f"seed{seed}"),
                {**overrides(over), "partition": mav, "seed": seed, "rounds": rounds})
            for mav in mavericks for seed in seeds for label, over in selectors.items()
            if mav in over.get("only-mavericks", mavericks)]


def read_pick(out: Path, spec: dict) -> tuple[dict, str]:
    """The tuned selector's setting and where it comes from: DIR/tune.csv's pick, else experiment.toml."""
    tune = spec["tune"]
    path = out / "tune.csv"
    if path.is_file():
        df = pd.read_csv(path)
        hit = df[df["picked"].astype(bool)]
        if len(hit) == 1:
            row = hit.iloc[0]
            return ({k: float(row[k]) for k in tune["grid"]}, f"picked by --tune on {row['mavericks']}, "
                    f"seed(s) {row['seeds']}, {int(row['rounds'])} rounds ({path.name})")
    return ({k: spec["selectors"][tune["selector"]][k] for k in tune["grid"]},
            "experiment.toml's values (not tuned: no tune.csv with a pick in the output folder)")


def report_selectors(out: Path, spec: dict, extra: bool) -> tuple[dict[str, dict], str]:
    """label -> run-config overrides of the report runs (the tuned selector with its setting),
    and a sentence saying where that setting comes from."""
    chosen = {**spec["selectors"], **(spec.get("extra", {}) if extra else {})}
    if "tune" not in spec:
        return chosen, ""
    label = spec["tune"]["selector"]
    setting, source = read_pick(out, spec)
    chosen[label] = {**chosen[label], **setting}
    return chosen, f"{label}: " + ", ".join(f"{k} = {v:g}" for k, v in setting.items()) + f"; {source}."


def tune_runs(out: Path, spec: dict, rounds: int) -> tuple[list[Run], dict[str, dict]]:
    """Random and every setting of the grid on the tuning seed(s); settings: label -> values."""
    tune = spec["tune"]
    label, keys = tune["selector"], list(tune["grid"])
    settings = {folder_name(label, s, keys): s
                for s in (dict(zip(keys, v)) for v in itertools.product(*tune["grid"].values()))}
    selectors = {REFERENCE: overrides(spec["selectors"][REFERENCE])} | {
        name: {**overrides(spec["selectors"][label]), **s} for name, s in settings.items()}
    return matrix(out, selectors, tune["seeds"], rounds, [tune["mavericks"]], {}), settings


def diffusion_runs(out: Path, spec: dict) -> list[Run]:
    """diffusion.toml per selector, experiment.toml's values (the tuning was on classifier accuracy)."""
    return [Run("diffusion", label, seed, run_folder(out, "diffusion", label, f"seed{seed}"),
                {**overrides(over), "seed": seed}, HERE / "diffusion.toml")
            for seed in range(spec["diffusion-seeds"]) for label, over in spec["selectors"].items()]


def execute(runs: list[Run], out: Path) -> None:
    todo = [r for r in runs if not is_done(r.folder)]
    for r in runs:
        if is_done(r.folder) and (why := report.stale(r)):
            print(f"kept as is, not counted: {r.folder.relative_to(out)}: {why}", flush=True)
    print(f"{len(runs) - len(todo)} of {len(runs)} runs already finished, {len(todo)} to run", flush=True)
    t0 = time.perf_counter()
    for i, r in enumerate(todo, 1):
        error = fedsim_run(r.config, r.overrides, r.folder)
        if error:
            r.folder.mkdir(parents=True, exist_ok=True)
            (r.folder / "error.txt").write_text(error + "\n")
        done = time.perf_counter() - t0
        print(f"[{i}/{len(todo)}] {r.folder.relative_to(out / 'runs')}: {'failed: ' + error if error else 'done'} "
              f"(elapsed {done / 60:.1f} min, ETA {done / i * (len(todo) - i) / 60:.1f} min)", flush=True)


def write_report(out: Path, runs: list[Run], selectors: list[str], spec: dict, seeds: list[int], rounds: int,
                 source: str) -> str:
    df = report.summarise(runs, rounds)
    df.to_csv(out / "r99.csv", index=False)
    ok = report.finished(df)
    header = [
        f"- mnist5k, 50 clients, 5 per round, FedAvg; budget {rounds} rounds; report seeds "
        f"{seeds[0]}–{seeds[-1]} (n below: the seeds finished).",
        f"- R@99: first round at 99 % of random selection's best test accuracy on the same seed; \"> {rounds}\": "
        f"not reached (censored, counted as {rounds + 1}: the mean is then a lower bound ≥, rounds saved an "
        "upper bound ≤).",
        "- Mean ± half-width of the 95 % t-interval over seeds; rounds saved = R@99(random) − R@99(selector), "
        "paired by seed; \"not significant\" when its interval contains 0. Final accuracy: the last round's.",
        *([f"- {source}"] if source else []),
        f"- Wall time: {ok.wall_s.astype(float).sum() / 60:.1f} min in {len(ok)} of {len(runs)} runs (sum of the "
        "rounds' wall_s; the Flower/Ray start-up of each run not included).",
    ]
    md = "\n".join(header) + "\n\n" + report.r99_table(df, selectors, spec["mavericks"], seeds, rounds)
    (out / "r99.md").write_text(md + "\n")
    if len(ok):
        report.save(report.plot_accuracy(runs, spec["mavericks"]), out / "accuracy.png")
        report.save(report.plot_selection([r for r in runs if r.mavericks == spec["mavericks"][0]
                                           and r.seed == seeds[0]]), out / "selection.png")
    return md


def write_tune(out: Path, runs: list[Run], settings: dict[str, dict], spec: dict, rounds: int) -> str:
    tune = spec["tune"]
    where = dict(mavericks=tune["mavericks"], seeds=" ".join(map(str, tune["seeds"])), rounds=rounds)
    summary = report.tune_summary(report.summarise(runs, rounds), settings, where)
    summary.to_csv(out / "tune.csv", index=False)
    md = (f"Tuning {tune['selector']} on {tune['mavericks']}, seed(s) {where['seeds']} (not report seeds), "
          f"{rounds} rounds; R@99 against random on the same seed(s); pick: the smallest R@99, ties: the best "
          "final accuracy.\n\n" + report.tune_table(summary, list(tune["grid"])))
    (out / "tune.md").write_text(md + "\n")
    return md


def check(spec: dict, seeds: list[int], tune: bool) -> str:
    if REFERENCE not in spec["selectors"]:
        return f"the experiment needs a '{REFERENCE}' selector (the R@99 reference)"
    if tune and "tune" not in spec:
        return "--tune needs a [tune] table in the experiment file"
    if "tune" in spec and set(spec["tune"]["seeds"]) & set(seeds):
        return f"tuning seeds {spec['tune']['seeds']} overlap the report seeds 0..{seeds[-1]}"
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (runs/ inside it is reused on resume)")
    ap.add_argument("--seeds", type=int, default=None, help="report seeds 0..N-1 (default: experiment.toml, 5)")
    ap.add_argument("--rounds", type=int, default=None, help="round budget (default: experiment.toml)")
    ap.add_argument("--config", default=str(HERE / "experiment.toml"))
    ap.add_argument("--extra", action="store_true", help="also the [extra] selectors (the authors' FedEMD)")
    ap.add_argument("--tune", action="store_true", help="run the [tune] grid on the tuning seeds, not the report")
    ap.add_argument("--diffusion", action="store_true", help="also the diffusion runs (diffusion.toml)")
    ap.add_argument("--report", action="store_true", help="start no run: rebuild tables and plots from finished runs")
    args = ap.parse_args(argv)
    spec = tomllib.loads(Path(args.config).read_text())
    seeds = list(range(args.seeds or spec["seeds"]))
    rounds = args.rounds or spec["rounds"]
    if problem := check(spec, seeds, args.tune):
        print(f"fedemd: error: {problem}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tune:
        runs, settings = tune_runs(out, spec, rounds)
    else:
        selectors, source = report_selectors(out, spec, args.extra)
        tuned = {spec["tune"]["selector"]: list(spec["tune"]["grid"])} if "tune" in spec else {}
        runs = matrix(out, selectors, seeds, rounds, spec["mavericks"], tuned)
    extra = diffusion_runs(out, spec) if args.diffusion else []
    t0 = time.perf_counter()
    if not args.report:
        execute(runs + extra, out)
    if args.tune:
        print(write_tune(out, runs, settings, spec, rounds))
    else:
        print(write_report(out, runs, list(selectors), spec, seeds, rounds, source))
    if args.diffusion:
        diff = report.diffusion_rows(extra)
        diff.to_csv(out / "diffusion.csv", index=False)
        print(diff.to_string(index=False) if not diff.empty else "(no finished diffusion runs)")
    print(f"wrote to {out} ({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
