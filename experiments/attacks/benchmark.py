"""Privacy benchmark: attacks x datasets x batch sizes x local steps x defenses, trials with intervals.

Reads experiments/attacks/benchmark.toml and runs every cell (dataset, attack, B, local steps,
defense) through attacks/runner.py (the code behind ``fedsim attack``) into
--out/cells/<cell>/, then the GIDM phase comparison where the config has one. Resumable: a
cell whose results.csv holds all its trials is kept; one cut off mid-way starts again. The cells'
results.csv files are committed (.gitignore keeps the rest of cells/ local), so a run may span sittings.
``--jobs N`` runs N cells at once, each in its own process with (cores / N) torch threads: small
models keep two cores busier as two one-thread processes than as one two-thread one.
Writes to --out (default docs/attacks): benchmark.csv (per cell x trial the attack's row and
the rows of the trivial baselines scored on the same targets: baseline-grey, baseline-mean,
baseline-random), benchmark.md (one table per dataset: PSNR per defense, mean with its 95 %
t-interval over the trials, the baselines' PSNR, SSIM, LPIPS where computed, median CPU
seconds per reconstruction; iteration counts in the table), benchmark.png (PSNR per attack and
setting, the mean-image baseline marked).

A config's ``defenses`` is a list of defense names, or a table of named defenses, each a
table of attack-config keys (e.g. ``[defenses.dp-eps1]`` with ``defense = "dp"`` and
``dp-epsilon = 1.0``). ``[datasets.NAME]`` tables (optional) each give ``classifier`` and
``diffusion`` keys over the shared ``[classifier]`` / ``[diffusion]`` ones; cells are then
named NAME-attack-bB-sS-defense. benchmark_compressed.toml runs a subset against
DHQ-compressed updates (the decoded update a compressed federation's server records).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import tomllib
from pathlib import Path
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Iterator, NamedTuple

import pandas as pd
import torch

from attacks.config import load_attack_config
from attacks.runner import run_attack
from fedsim.cli.sweep import die_with_parent
from fedsim.records.stats import t_interval

HERE = Path(__file__).resolve().parent
CLASSIFIER = ("dlg", "idlg", "ig", "simulation", "agic")
BASELINE = "baseline-"  # attacks/runner.py writes rows baseline-grey / -mean / -random after each trial's row


class Cell(NamedTuple):
    id: str  # its folder under cells/
    dataset: str  # the [datasets] name ("" without that table)
    attack: str
    defense: str  # the defense's name in the config
    mapping: dict  # the attack config


def defenses(spec: dict) -> dict[str, dict]:
    d = spec["defenses"]
    return {name: {"defense": name} for name in d} if isinstance(d, list) else d


def cells(spec: dict) -> list[Cell]:
    sets = spec.get("datasets") or {"": {}}
    out = []
    for ds, over in sets.items():
        for name, table in spec["attacks"].items():
            family = "classifier" if name in CLASSIFIER else "diffusion"
            base = {**spec[family], **over.get(family, {})}
            for steps in spec["local-steps"]:
                for batch in spec["batch-sizes"]:
                    for dname, dkeys in defenses(spec).items():
                        mapping = {**base, **dkeys, "attack": name, "batch-size": batch, "local-steps": steps,
                                   "trials": spec["trials"], "seed": spec["seed"],
                                   "threat": dict(table.get("threat", {})), "options": dict(table.get("options", {}))}
                        cell_id = f"{ds + '-' if ds else ''}{name}-b{batch}-s{steps}-{dname}"
                        out.append(Cell(cell_id, ds, name, dname, mapping))
    return out


def finished(folder: Path, cell: Cell) -> pd.DataFrame | None:
    """The cell's rows if its results.csv holds every trial, else None."""
    path = folder / "results.csv"
    if not path.is_file():
        return None
    rows = pd.read_csv(path)
    done = rows[rows.attack == cell.attack].trial.nunique() >= cell.mapping["trials"]
    return rows.assign(cell=cell.attack, bench_dataset=cell.dataset, bench_defense=cell.defense,
                       bench_b=cell.mapping["batch-size"]) if done else None  # B per client (SecAgg: 2B recovered)


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
    """Rows of one named defense (the ``bench_defense`` column the runner adds)."""
    return g[g.bench_defense == defense]


def _defense_label(df: pd.DataFrame, spec: dict, defense: str) -> str:
    """A list config's "dp" reads "DP" and a codec its spec, e.g. dhq(p=0.05,L=4); a named defense its name."""
    if not isinstance(spec["defenses"], list):
        return defense
    if defense == "dp":
        return "DP"
    specs = _of_defense(df, defense).defense.unique()
    return str(specs[0]) if len(specs) else defense


def psnr_cell(values: pd.Series) -> str:
    """'24.10' for one trial, '24.10 ± 1.32' (95 % t-interval half-width) for several."""
    iv = t_interval(list(values))
    if iv.n == 0:
        return ""
    return f"{iv.mean:.2f}" if iv.n < 2 or pd.isna(iv.half_width) else f"{iv.mean:.2f} ± {iv.half_width:.2f}"


def is_baseline(df: pd.DataFrame) -> pd.Series:
    return df.attack.astype(str).str.startswith(BASELINE)


def table(df: pd.DataFrame, spec: dict) -> str:
    """Per dataset, one line per attack x local steps x B; the baselines' PSNR (no defense) on the same targets."""
    names = list(defenses(spec))
    others = names[1:]
    has_lpips = "lpips" in df and df.lpips.notna().any()
    cpu = "cpu_s" if "cpu_s" in df and df.cpu_s.notna().any() else "wall_s"
    head = ("| attack | iterations | B | local steps | PSNR (dB) | "
            + "".join(f"PSNR with {_defense_label(df, spec, d)} | " for d in others)
            + "grey / mean / random image (dB) | SSIM | " + ("LPIPS | " if has_lpips else "")
            + f"label acc | t acc | {'CPU' if cpu == 'cpu_s' else 'wall'} s / reconstruction |")
    out = []
    for ds, part in df.groupby("bench_dataset", sort=False):
        lines = ([f"**{ds}**", ""] if ds else []) + [head, "|---|---|---|---|---|" + "---|" * len(others)
                                                      + "---|---|" + ("---|" if has_lpips else "") + "---|---|---|"]
        for (attack, steps, batch), g in part.groupby(["cell", "local_steps", "bench_b"], sort=False):
            base, g = g[is_baseline(g)], g[~is_baseline(g)]
            none = _of_defense(g, names[0])
            guesses = " / ".join(fmt(_of_defense(base[base.attack == f"{BASELINE}{k}"], names[0]).psnr.mean())
                                 for k in ("grey", "mean", "random"))
            opts = spec["attacks"][attack].get("options", {})
            lines.append(f"| {attack} | {iterations_of(opts)} | {batch} | {steps} | {psnr_cell(none.psnr)} | "
                         + "".join(f"{psnr_cell(_of_defense(g, d).psnr)} | " for d in others)
                         + f"{guesses} | {fmt(none.ssim.mean(), '.3f')} | "
                         + (f"{fmt(none.lpips.mean(), '.3f')} | " if has_lpips else "")
                         + f"{fmt(none.label_acc.mean())} | {fmt(none.t_acc.mean())} | "
                         f"{fmt(none[cpu].median(), '.1f')} |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def plot(df: pd.DataFrame, spec: dict, path: Path) -> None:
    """One panel per dataset x attack: mean PSNR per setting and defense, the mean image marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(defenses(spec))
    base, df = df[is_baseline(df)], df[~is_baseline(df)]
    attacks, sets = list(dict.fromkeys(df.attack)), list(dict.fromkeys(df.bench_dataset))
    fig, axes = plt.subplots(len(sets), len(attacks), figsize=(3.2 * len(attacks), 3.2 * len(sets)), sharey=True,
                             squeeze=False)
    for row, ds in zip(axes, sets):
        for ax, attack in zip(row, attacks):
            g = df[(df.attack == attack) & (df.bench_dataset == ds)]
            if g.empty:
                ax.set_visible(False)
                continue
            piv = g.pivot_table(index=["local_steps", "bench_b"], columns="bench_defense", values="psnr",
                                aggfunc="mean")
            piv = piv[[n for n in names if n in piv.columns]]
            mean = base[(base.cell == attack) & (base.bench_dataset == ds) & (base.attack == f"{BASELINE}mean")
                        & (base.bench_defense == names[0])]
            guess = mean.groupby(["local_steps", "bench_b"]).psnr.mean().reindex(piv.index)
            piv.index = [f"s{s}/B{b}" for s, b in piv.index]
            piv.plot.bar(ax=ax, rot=60, legend=ax is axes[0][0])
            if guess.notna().any():
                ax.plot(range(len(guess)), guess.to_numpy(), "k_", markersize=14, mew=2, label="mean image")
                if ax is axes[0][0]:
                    ax.legend(fontsize=7)
            ax.set_title(f"{ds}: {attack}" if ds else attack)
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


def cell_rows(cell: Cell, folder: Path, run: bool = True) -> tuple[pd.DataFrame | None, bool]:
    """(the cell's rows, whether it ran now): a finished cell is read; another one is run from its first
    trial (a cut-off attempt is removed) unless ``run`` is off."""
    rows = finished(folder, cell)
    if rows is not None or not run:
        return rows, False
    shutil.rmtree(folder, ignore_errors=True)
    run_attack(load_attack_config(cell.mapping), folder)
    return finished(folder, cell), True


def _worker_init(threads: int) -> None:
    die_with_parent()
    torch.set_num_threads(threads)


def run_cells(todo: list[Cell], out: Path, *, run: bool, jobs: int) -> Iterator[tuple[int, Cell, pd.DataFrame | None, bool]]:
    """(index, cell, rows, ran) for every cell: finished ones first, then each as it ends, ``jobs`` at once."""
    if jobs <= 1 or not run:
        for i, cell in enumerate(todo):
            yield (i, cell, *cell_rows(cell, out / "cells" / cell.id, run=run))
        return
    pending = []
    for i, cell in enumerate(todo):
        rows = finished(out / "cells" / cell.id, cell)
        if rows is None:
            pending.append((i, cell))
        else:
            yield i, cell, rows, False
    threads = max(1, len(os.sched_getaffinity(0)) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(cell_rows, cell, out / "cells" / cell.id): (i, cell) for i, cell in pending}
        for f in as_completed(futures):
            yield (*futures[f], *f.result())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(HERE / "benchmark.toml"))
    ap.add_argument("--out", default="docs/attacks")
    ap.add_argument("--only", nargs="*", help="attacks to run (default: all in the config)")
    ap.add_argument("--report", action="store_true",
                    help="rebuild benchmark.csv/md/png from the finished cells, running nothing")
    ap.add_argument("--jobs", type=int, default=1, help="cells run at once, each in its own process (default 1)")
    args = ap.parse_args(argv)
    spec = tomllib.loads(Path(args.config).read_text())
    out = Path(args.out)
    todo = [c for c in cells(spec) if not args.only or c.attack in args.only]
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    frames, start = {}, time.perf_counter()
    for i, cell, rows, ran in run_cells(todo, out, run=not args.report, jobs=args.jobs):
        if ran:
            att = rows[rows.attack == cell.attack]
            done = time.perf_counter() - start
            print(f"[{i + 1}/{len(todo)}] {cell.id}: PSNR {att.psnr.mean():.2f} dB, "
                  f"CPU {att.cpu_s.median():.1f} s (elapsed {done / 60:.1f} min)", flush=True)
        if rows is not None:
            frames[i] = rows
    frames = [frames[i] for i in sorted(frames)]
    if not frames:
        print(f"no finished cells under {out / 'cells'}", file=sys.stderr)
        return 2
    df = pd.concat(frames, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "benchmark.csv", index=False)
    plot(df, spec, out / "benchmark.png")
    cpu = df[~is_baseline(df)].cpu_s.sum() / 60 if "cpu_s" in df else float("nan")
    md = [f"{len(frames)} of {len(todo)} cells finished, {spec['trials']} trial(s) per cell; mean ± 95 % t-interval "
          f"half-width over the trials. CPU time of the attacks: {cpu:.1f} min in all.", "", table(df, spec)]
    if "phases" in spec and (not args.only or "gidm" in args.only) and not args.report:
        ph = phases(spec, out)
        ph.to_csv(out / "gidm_phases.csv", index=False)
        md += ["", "GIDM phases (B = 1, FedSGD, mean over trials):", "", *phase_table(ph)]
    (out / "benchmark.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def phases(spec: dict, out: Path) -> pd.DataFrame:
    rows = []
    for k, (label, mapping) in enumerate(phase_cells(spec)):
        got, _ = cell_rows(Cell(f"phases-{k}", "", mapping["attack"], "none", mapping), out / "cells" / f"phases-{k}")
        rows.append(got.assign(variant=[a if a.startswith(BASELINE) else label for a in got.attack]))
        print(f"phases: {label}: PSNR {got.psnr.iloc[0]:.2f} dB", flush=True)
    return pd.concat(rows, ignore_index=True)


if __name__ == "__main__":
    sys.exit(main())
