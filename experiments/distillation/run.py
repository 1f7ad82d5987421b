"""SFDDM experiment (issue 22): the teacher's DDIM at K steps against the SFDDM student at K steps.

The teacher is a finished run: by default the quickstart DDPM with T = 1024, as in the paper,
so that every K of {4, 8, 16, 64} divides T (experiments/distillation/teacher.toml, trained into
OUT/teacher and reused when done). For each K in --steps and each seed s:

- ``fedsim distill TEACHER --steps K --seed s --epochs E`` trains the student (the command's
  defaults otherwise: Adam at 2e-4 on the test split of the run's dataset, l1 hidden loss; E = 300,
  the command's default, is about the paper's 10,000 Adam steps on 1,000 images) into
  OUT/students/K-s; the seed drives the student's training only;
- the teacher with DDIM in K steps and the student in its K steps each draw --samples images from
  the same noise (seeded by s; conditional runs ask for the classes round-robin); both are scored
  as the run's evaluation scores (fedsim/evaluation: recognised share, FD and KID against one real
  half of the test split, with the other half's FD and KID as the floor), and timed (seconds of
  sampling per image, one process, this machine's threads).

Rows go to OUT/results.csv as they finish (a rerun skips what is there, and refuses an OUT whose
students were trained for other epochs). OUT/results.md: per K,
mean ± 95 % t-interval over seeds of each sampler's scores, and the student's paired per-seed
difference from the teacher's DDIM; OUT/results.png: KID and recognised share against K.
No setting was tuned: the distillation uses the command's defaults.

    python experiments/distillation/run.py --out docs/distillation [--steps 4 8 16 64] [--seeds 3] [--epochs 300] [--report]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from fedsim.cli.sweep import fedsim_run, is_done
from fedsim.records.stats import paired_difference, t_interval, verdict

HERE = Path(__file__).resolve().parent
TEACHER = HERE / "teacher.toml"
COLUMNS = (("kid", "KID", 1.0, True), ("fd", "FD", 1.0, True), ("recognised", "recognised, %", 100.0, False),
           ("s_per_image", "ms per image", 1e3, True))


def score_row(se, model, schedule, k: int, seed: int, n: int) -> dict:
    """Sample n images in k steps from the noise of `seed` and score them as a run's evaluation does."""
    import torch

    from fedsim.models.diffusion import sample

    classes = se.test.num_classes
    labels = torch.arange(n) % classes if se.cfg.conditional else None
    t0 = time.perf_counter()
    images = sample(model.eval(), schedule, n, se.test.shape, generator=torch.Generator().manual_seed(1000 + seed),
                    steps=k, labels=labels)
    seconds = (time.perf_counter() - t0) / n
    return {**se.score_images(images, seed)[1], "s_per_image": seconds}


def run_cells(teacher: Path, out: Path, steps: list[int], seeds: int, n: int, epochs: int) -> int:
    from fedsim.cli.main import main as fedsim
    from fedsim.evaluation.server import ServerEvaluator
    from fedsim.models.diffusion import student_meta, student_schedule
    from fedsim.models.networks import load_pretrained
    from fedsim.models.train import run_task
    from fedsim.records.run_folder import finished_run_config

    csv = out / "results.csv"
    done = pd.read_csv(csv) if csv.is_file() else pd.DataFrame(columns=["steps", "seed", "sampler"])
    have = set(zip(done.steps, done.seed, done.sampler))
    if "epochs" in done and (other := set(done.epochs) - {epochs}):
        print(f"error: {csv} holds students trained for {sorted(other)} epochs, not --epochs {epochs}; "
              f"give another --out", file=sys.stderr)
        return 2
    if all((k, s, m) in have for k in steps for s in range(seeds) for m in ("teacher-ddim", "student")):
        return 0  # every row is there: the teacher and the students (git-ignored) are not needed
    cfg = finished_run_config(teacher)
    se = ServerEvaluator(cfg, out)
    teacher_model = load_pretrained(teacher / "model")
    for k in steps:
        for seed in range(seeds):
            folder = out / "students" / f"{k}-{seed}"
            if meta := student_meta(folder / "model"):
                if meta.get("epochs") != epochs:
                    print(f"error: {folder} was trained for {meta.get('epochs')} epochs, not --epochs {epochs}; "
                          f"give another --out", file=sys.stderr)
                    return 2
            else:
                code = fedsim(["distill", str(teacher), "--steps", str(k), "--seed", str(seed),
                              "--epochs", str(epochs), "--out", str(folder)])
                if code:
                    return code
            for sampler in ("teacher-ddim", "student"):
                if (k, seed, sampler) in have:
                    continue
                if sampler == "student":
                    model, schedule = load_pretrained(folder / "model"), student_schedule(folder / "model")
                else:
                    model, schedule = teacher_model, run_task(cfg).schedule
                row = {"steps": k, "seed": seed, "sampler": sampler, "epochs": epochs,
                       **score_row(se, model, schedule, k, seed, n)}
                pd.DataFrame([row]).to_csv(csv, mode="a", header=not csv.is_file(), index=False)
                print(f"K={k} seed={seed} {sampler}: KID {row['kid']:.1f} (floor {row['kid_floor']:.1f}), "
                      f"recognised {100 * row['recognised']:.1f} %, FD {row['fd']:.1f}, "
                      f"{1e3 * row['s_per_image']:.1f} ms/image", flush=True)
    return 0


def table(rows: pd.DataFrame, teacher: str, n: int) -> str:
    seeds = sorted(rows.seed.unique())
    floor = rows.groupby("seed").kid_floor.first().mean()
    budget = (f"Students: {', '.join(map(str, sorted(rows.epochs.unique())))} epochs of Adam over the server's data. "
              if "epochs" in rows else "")
    lines = [f"Teacher: {teacher}. {budget}{n} samples per cell; seeds {', '.join(map(str, seeds))} (the student's training "
             f"and the shared sampling noise). Mean ± half-width of the 95 % t-interval over seeds. KID floor (real "
             f"half against real half): {floor:.1f}, in the evaluator's feature units as the run's metrics.csv. Student vs teacher: paired per-seed difference.", "",
             "| K | sampler | " + " | ".join(c[1] for c in COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for k, g in rows.groupby("steps"):
        for sampler, s in g.groupby("sampler", sort=False):
            lines.append(f"| {k} | {sampler} | " + " | ".join(
                t_interval(list(scale * s[c])).fmt(3) for c, _, scale, _ in COLUMNS) + " |")
        t, s = g[g.sampler == "teacher-ddim"], g[g.sampler == "student"]
        cells = []
        for c, _, scale, lower in COLUMNS:
            d = paired_difference(dict(zip(s.seed, scale * s[c])), dict(zip(t.seed, scale * t[c])))
            cells.append(f"{d.fmt(2, signed=True)}, {verdict(d, lower_is_better=lower)}")
        lines.append(f"| {k} | student − teacher | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for sampler, g in rows.groupby("sampler", sort=False):
        for ax, (col, label, scale) in zip(axes, (("kid", "KID", 1.0), ("recognised", "recognised, %", 100))):
            stats = [(k, t_interval(list(scale * s[col]))) for k, s in g.groupby("steps")]
            ax.errorbar([k for k, _ in stats], [i.mean for _, i in stats], yerr=[i.half_width for _, i in stats],
                        marker="o", capsize=3, label=sampler)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log" if col == "kid" else "linear")
            ax.set_xlabel("sampling steps K")
            ax.set_ylabel(label)
    axes[0].axhline(rows.kid_floor.mean(), color="grey", ls=":", label="real vs real")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--teacher", help="a finished DDPM run (default: train teacher.toml into OUT/teacher)")
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 64])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=300, help="the students' training epochs (fedsim distill's default, 300)")
    ap.add_argument("--report", action="store_true", help="only rebuild results.md and results.png")
    args = ap.parse_args(argv)
    out = Path(args.out)
    teacher = Path(args.teacher) if args.teacher else out / "teacher"
    if not args.report:
        if not args.teacher:
            err = fedsim_run(TEACHER, {}, teacher)
            if err:
                print(f"error: the teacher run failed: {err}", file=sys.stderr)
                return 1
        elif not is_done(teacher):
            print(f"error: {teacher} is not a finished run", file=sys.stderr)
            return 2
        code = run_cells(teacher, out, args.steps, args.seeds, args.samples, args.epochs)
        if code:
            return code
    if not (out / "results.csv").is_file():
        print(f"error: no results under {out}", file=sys.stderr)
        return 2
    rows = pd.read_csv(out / "results.csv")
    name = "experiments/distillation/teacher.toml" if not args.teacher else str(teacher)
    md = table(rows, name, args.samples)
    (out / "results.md").write_text(md)
    plot(rows, out / "results.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
