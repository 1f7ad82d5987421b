"""Stealing experiment (issue 22): MEGA against a DFME-style generator and random queries, on one budget.

Trains the target once (target.toml, a real ``fedsim run`` into OUT/target, reused when done),
then runs ``fedsim steal`` on it for 3 seeds of each method (OUT/steal/: curve.csv, final.csv,
curve.png), and writes OUT/results.md: per method, the substitute's test accuracy, its agreement
with the target and the PGD transfer success at the full budget (mean ± 95 % t-interval over the
seeds), and MEGA's paired per-seed difference from each baseline.

    python experiments/stealing/run.py --out docs/stealing [--budget 20000] [--seeds 3] [--report]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from fedsim.cli.sweep import fedsim_run, is_done
from fedsim.records.stats import paired_difference, t_interval, verdict

HERE = Path(__file__).resolve().parent
COLUMNS = (("accuracy", "substitute accuracy, %"), ("agreement", "agreement with the target, %"),
           ("transfer_success", "transfer success, %"))


def table(final: pd.DataFrame, budget: int, target_acc: float) -> str:
    lines = [f"Budget {budget} label-only queries per attack; seeds {', '.join(map(str, sorted(final.seed.unique())))}; "
             f"the target's test accuracy is {100 * target_acc:.1f} %. Mean ± half-width of the 95 % t-interval "
             "over seeds; MEGA vs a baseline is the paired per-seed difference.", "",
             "| method | " + " | ".join(c for _, c in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for method, g in final.groupby("method", sort=False):
        lines.append(f"| {method} | " + " | ".join(t_interval(list(100 * g[c])).fmt(3) for c, _ in COLUMNS) + " |")
    mega = final[final.method == "mega"]
    if len(mega):
        lines += ["", "| MEGA vs | " + " | ".join(c for _, c in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
        for method, g in final[final.method != "mega"].groupby("method", sort=False):
            cells = []
            for c, _ in COLUMNS:
                d = paired_difference(dict(zip(mega.seed, 100 * mega[c])), dict(zip(g.seed, 100 * g[c])))
                cells.append(f"{d.fmt(2, signed=True)}, {verdict(d)}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=int, default=20000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--report", action="store_true", help="only rebuild results.md from OUT/steal/")
    args = ap.parse_args(argv)
    out = Path(args.out)
    target = out / "target"
    if not args.report:
        err = fedsim_run(HERE / "target.toml", {}, target)
        if err:
            print(f"error: the target run failed: {err}", file=sys.stderr)
            return 1
        from fedsim.cli.main import main as fedsim

        code = fedsim(["steal", str(target), "--budget", str(args.budget), "--seeds", str(args.seeds),
                       "--out", str(out / "steal")])
        if code:
            return code
    if not is_done(target) or not (out / "steal" / "final.csv").is_file():
        print(f"error: nothing finished under {out}", file=sys.stderr)
        return 2
    final = pd.read_csv(out / "steal" / "final.csv")
    target_acc = float(pd.read_csv(target / "metrics.csv").test_acc.iloc[-1])
    md = table(final, args.budget, target_acc)
    (out / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
